//! Rego policies, compiled once and evaluated many times, with `regorus`.
//!
//! Who uses it: the engine (`meshproxy-core`) compiles each policy a config attaches when the
//! config is applied, and evaluates it on a request's or a response's input; the CLI's `check`
//! compiles through the addon to report a policy's syntax errors. What it must not know: routes,
//! services, HTTP servers or what a violation does — it turns Rego source into a [`Policy`] and an
//! input into the rule's messages.
//!
//! How: a policy's module is parsed (Rego v1 first, then v0, as OPA before 1.0 reads it, when v1
//! refuses it) and compiled for one entry point, `data.<package>.<rule>` (the rule `violation` by
//! default), once per config, then compiled again to a program for regorus's bytecode VM (`rvm`),
//! which evaluates a request-sized policy in less than half the instructions of its tree-walking
//! interpreter (docs/performance.md). A program is shared (`Arc`); a VM holds one evaluation's
//! state and is `Send` but not `Sync`, so each policy keeps a small pool of VMs loaded with its
//! program: an evaluation takes one, sets the input, runs the program and gives it back, so
//! evaluations on different threads never wait for each other (the pool's lock is held only to
//! pop and push) and never reload the program. A builtin's error is the evaluation's error
//! (strict builtin errors, in the VM as in the interpreter), and each evaluation is capped by a
//! time limit the VM checks as it runs (between instructions: one builtin call runs to its end).
//! A module the VM's compiler refuses (a construct it does not support) is evaluated by the
//! interpreter instead, with the same pool, limits and strictness.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::rvm::Program;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Engine};

pub use regorus::{Rc, Value};

/// A policy that did not compile: where (the policy file's line and column, 1-based; 0 when the
/// error has no position) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct CompileError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// An evaluation that gave no answer: the policy failed (a builtin's error, a conflict between
/// rule values) or ran past its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("policy evaluation exceeded its limit ({0})")]
    Limit(String),
    #[error("policy evaluation failed: {0}")]
    Failed(String),
}

/// How much one evaluation may run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time, checked as the evaluation goes.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { time: Duration::from_millis(100) }
    }
}

/// A compiled policy: its entry point and a pool of evaluators prepared to evaluate it.
pub struct Policy {
    file: Box<str>,
    entry: Box<str>,
    reads_body: bool,
    evaluator: Evaluator,
}

/// How a policy is evaluated: on regorus's VM, or on its interpreter where the VM's compiler
/// refuses the module. Each keeps idle prepared evaluators; one is taken per evaluation (a new
/// one when all are in use) and given back after, up to [`POOL_MAX`].
enum Evaluator {
    Vm {
        program: Arc<Program>,
        /// For rules' `default` values, which the VM reads from the compiled policy.
        compiled: CompiledPolicy,
        limits: Limits,
        vms: Mutex<Vec<RegoVM>>,
    },
    Interpreter {
        /// The prepared engine the pool's engines are cloned from (boxed: an `Engine` is large).
        template: Box<Engine>,
        engines: Mutex<Vec<Engine>>,
    },
}

/// The idle evaluators a policy keeps: enough for the worker threads of a busy proxy.
const POOL_MAX: usize = 64;

/// How often the time limit is checked: every this many VM instructions or interpreter steps.
const TIMER_CHECK_INTERVAL: u32 = 256;

fn timer(limits: Limits) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: limits.time,
        check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("file", &self.file)
            .field("entry", &self.entry)
            .field("vm", &self.on_vm())
            .finish()
    }
}

/// What an evaluation found: the rule's members (or value), as messages; empty = no violation.
pub type Messages = Vec<String>;

impl Policy {
    /// Compiles `source` (labelled `file` in errors) for the rule `rule` of its package: as Rego
    /// v1 first, then as v0 (the seed's syntax, OPA before 1.0); when both refuse it, the error of
    /// the reading that got further into the file is reported. v1 first because regorus's v0
    /// parser prints a warning to stderr for each v1 keyword it meets, and a v0 rule body (no
    /// `if`) is a syntax error in v1, so a v0 module is never taken for a v1 one.
    pub fn compile(file: &str, source: &str, rule: &str, limits: Limits) -> Result<Policy, CompileError> {
        Self::compile_with(file, source, rule, limits, true)
    }

    fn compile_with(
        file: &str,
        source: &str,
        rule: &str,
        limits: Limits,
        allow_vm: bool,
    ) -> Result<Policy, CompileError> {
        let (entry, mut engine) = match build(file, source, rule, false) {
            Ok(built) => built,
            Err(v1) => build(file, source, rule, true).map_err(|v0| further(v0, v1))?,
        };
        let vm = if allow_vm && vm_agrees(&mut engine, source) {
            vm_program(&mut engine, &entry, limits)
        } else {
            None
        };
        let evaluator = match vm {
            Some((program, compiled, vm)) => {
                Evaluator::Vm { program, compiled, limits, vms: Mutex::new(vec![vm]) }
            }
            None => {
                engine.set_strict_builtin_errors(true);
                engine.set_execution_timer_config(timer(limits));
                Evaluator::Interpreter {
                    engines: Mutex::new(vec![engine.clone()]),
                    template: Box::new(engine),
                }
            }
        };
        Ok(Policy { file: file.into(), entry: entry.into(), reads_body: mentions(source, "body"), evaluator })
    }

    /// Whether the policy runs on regorus's VM (rather than its interpreter).
    pub fn on_vm(&self) -> bool {
        matches!(self.evaluator, Evaluator::Vm { .. })
    }

    /// The policy file's name as the config gave it.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The rule evaluated, e.g. `data.main.violation`.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Whether the policy's source names a `body` at all (outside comments): regorus does not
    /// report which input paths a module reads, and a policy that never spells `body` cannot
    /// reach `input.response.body` but through a computed key — which a config can still ask
    /// for with the policy's own setting.
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    /// Evaluates the rule on `input`: its messages (a set's or array's members; a string, or
    /// `true`, as one message; `false`, undefined or empty as none).
    ///
    /// A builtin's error (`to_number("abc")`, a division by zero) is the evaluation's error, for
    /// the caller's error mode to decide, rather than an undefined expression that silently
    /// passes (strict builtin errors).
    pub fn evaluate(&self, input: Value) -> Result<Messages, EvalError> {
        match &self.evaluator {
            Evaluator::Vm { program, compiled, limits, vms } => {
                let popped = vms.lock().pop();
                let mut vm = popped.unwrap_or_else(|| new_vm(program, compiled, *limits));
                // The previous input is released here, when the VM is next used.
                vm.set_input(input);
                // Each run starts from a clean state (the VM resets it), so a VM whose run failed
                // is as good as any.
                let result = vm.execute().map(|v| messages(&v)).map_err(|e| self.vm_error(e));
                let mut pool = vms.lock();
                if pool.len() < POOL_MAX {
                    pool.push(vm);
                }
                result
            }
            Evaluator::Interpreter { template, engines } => {
                let popped = engines.lock().pop();
                let mut engine = popped.unwrap_or_else(|| Engine::clone(template));
                engine.set_input(input);
                let result = match engine.eval_rule(self.entry.to_string()) {
                    Ok(v) => Ok(messages(&v)),
                    Err(e) => {
                        let limit = e.downcast_ref::<regorus::LimitError>().is_some();
                        let text = error_at(&self.file, &e);
                        let text = if text.line > 0 { text.to_string() } else { text.message };
                        // An engine stopped mid-run is not reused: its state is whatever the
                        // error left.
                        return Err(if limit { EvalError::Limit(text) } else { EvalError::Failed(text) });
                    }
                };
                let mut pool = engines.lock();
                if pool.len() < POOL_MAX {
                    pool.push(engine);
                }
                result
            }
        }
    }

    fn vm_error(&self, e: VmError) -> EvalError {
        let limit = matches!(
            e,
            VmError::TimeLimitExceeded { .. }
                | VmError::InstructionLimitExceeded { .. }
                | VmError::MemoryLimitExceeded { .. }
                | VmError::RegexSizeLimitExceeded { .. }
        );
        let text = format!("{}: {e}", self.file);
        if limit {
            EvalError::Limit(text)
        } else {
            EvalError::Failed(text)
        }
    }
}

/// Whether regorus's VM evaluates this module as its interpreter (and OPA) does. The VM (0.14.1)
/// differs in two ways that matter to a policy's verdict: an error inside a rule body (a
/// builtin's, an arithmetic one) makes the body undefined instead of failing the evaluation, and
/// two definitions of a complete rule with different values make it undefined instead of a
/// conflict error. Neither can happen in a module whose rules are all partial sets
/// (`violation[msg] { … }`, `deny contains msg if …`) and whose source calls no function and does
/// no arithmetic or set algebra — the seed's shape, and that of most request checks — which is
/// what this accepts; anything else is evaluated by the interpreter. The source test is lexical
/// and errs towards the interpreter (a `-` or `(` anywhere outside strings and comments).
fn vm_agrees(engine: &mut Engine, source: &str) -> bool {
    use regorus::unstable::{Rule, RuleHead};
    let partial_sets = engine.get_modules().iter().all(|m| {
        m.policy.iter().all(|r| matches!(r.as_ref(), Rule::Spec { head: RuleHead::Set { .. }, .. }))
    });
    partial_sets && !code_of(source).any(|c| matches!(c, '(' | '+' | '-' | '*' | '/' | '%' | '|' | '&'))
}

/// The characters of `source` outside its comments (`#` to the line's end) and string literals
/// (`"…"` with escapes, and raw `` `…` `` strings, which may span lines).
fn code_of(source: &str) -> impl Iterator<Item = char> + '_ {
    #[derive(Clone, Copy)]
    enum In {
        Code,
        Comment,
        Str { escaped: bool },
        Raw,
    }
    let mut state = In::Code;
    source.chars().filter(move |&c| {
        let (next, code) = match (state, c) {
            (In::Code, '#') => (In::Comment, false),
            (In::Code, '"') => (In::Str { escaped: false }, false),
            (In::Code, '`') => (In::Raw, false),
            (In::Code, _) => (In::Code, true),
            (In::Comment, '\n') => (In::Code, true),
            (In::Comment, _) => (In::Comment, false),
            (In::Str { escaped: false }, '\\') => (In::Str { escaped: true }, false),
            (In::Str { escaped: false }, '"' | '\n') => (In::Code, false),
            (In::Str { .. }, _) => (In::Str { escaped: false }, false),
            (In::Raw, '`') => (In::Code, false),
            (In::Raw, _) => (In::Raw, false),
        };
        state = next;
        code
    })
}

/// The VM's program for `entry`, compiled from the interpreter's compiled policy, with a VM that
/// has run it once (on an empty input, as [`build`] runs the interpreter); `None` when the VM's
/// compiler or that first run refuses the module, which the interpreter then evaluates.
fn vm_program(
    engine: &mut Engine,
    entry: &str,
    limits: Limits,
) -> Option<(Arc<Program>, CompiledPolicy, RegoVM)> {
    let compiled = engine.compile_with_entrypoint(&Rc::from(entry)).ok()?;
    let program = match Compiler::compile_from_policy(&compiled, &[entry]) {
        Ok(program) => program,
        Err(e) => {
            tracing::debug!(entry, error = %e, "Rego policy evaluated by regorus's interpreter: its VM compiler refuses it");
            return None;
        }
    };
    let mut vm = new_vm(&program, &compiled, limits);
    vm.set_input(Value::new_object());
    if let Err(e) = vm.execute() {
        tracing::debug!(entry, error = %e, "Rego policy evaluated by regorus's interpreter: its VM fails on an empty input");
        return None;
    }
    Some((program, compiled, vm))
}

/// A VM ready to run `program`.
fn new_vm(program: &Arc<Program>, compiled: &CompiledPolicy, limits: Limits) -> RegoVM {
    let mut vm = RegoVM::new_with_policy(compiled.clone());
    vm.load_program(program.clone());
    // Off: the modules the VM runs call no builtins, and strict mode would make a comparison
    // across types (which Rego orders) an error.
    vm.set_strict_builtin_errors(false);
    // The time limit is the cap; the VM's own instruction cap (25,000 by default) would stop a
    // legitimate policy over a large input first.
    vm.set_max_instructions(usize::MAX);
    vm.set_execution_timer_config(Some(timer(limits)));
    vm
}

/// Checks a policy (what `meshproxy check` reports): it parses and compiles, as Rego v0 or v1,
/// for `rule`.
pub fn check(file: &str, source: &str, rule: &str) -> Result<(), CompileError> {
    match build(file, source, rule, false) {
        Ok(_) => Ok(()),
        Err(v1) => build(file, source, rule, true).map(|_| ()).map_err(|v0| further(v0, v1)),
    }
}

/// Of two readings' errors, the one further into the file.
fn further(a: CompileError, b: CompileError) -> CompileError {
    if (b.line, b.column) > (a.line, a.column) {
        b
    } else {
        a
    }
}

/// The module parsed in one Rego version and compiled to a program for `data.<package>.<rule>`.
fn build(file: &str, source: &str, rule: &str, v0: bool) -> Result<(String, Engine), CompileError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(v0);
    engine.add_policy(file.to_string(), source.to_string()).map_err(|e| error_at(file, &e))?;
    let package =
        engine.get_packages().map_err(|e| error_at(file, &e))?.into_iter().next().ok_or_else(|| {
            CompileError {
                file: file.into(),
                line: 1,
                column: 1,
                message: "the policy has no package".into(),
            }
        })?;
    let entry = format!("{package}.{rule}");
    engine.compile_with_entrypoint(&Rc::from(entry.as_str())).map_err(|e| {
        let mut err = error_at(file, &e);
        if err.line == 0 {
            err.message = format!("rule {rule:?} of {package}: {}", err.message);
        }
        err
    })?;
    // Some static errors (an unsafe variable, which is what a v1 module read as v0 gives) show
    // only when the rule is first evaluated: on an empty input, builtins not yet strict.
    engine.set_input(Value::new_object());
    engine.eval_rule(entry.clone()).map_err(|e| error_at(file, &e))?;
    Ok((entry, engine))
}

/// regorus's error as a [`CompileError`]: its position from the `--> file:line:col` line of its
/// message, its text from the `error: …` line.
fn error_at(file: &str, e: &dyn std::fmt::Display) -> CompileError {
    let text = e.to_string();
    let mut line = 0;
    let mut column = 0;
    let mut message = None;
    for l in text.lines() {
        if let Some(at) = l.trim_start().strip_prefix("--> ") {
            let mut parts = at.rsplitn(3, ':');
            column = parts.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
            line = parts.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        } else if let Some(m) = l.strip_prefix("error: ") {
            message = Some(m.trim().to_string());
        }
    }
    let message = message.unwrap_or_else(|| text.trim().to_string());
    CompileError { file: file.into(), line, column, message }
}

/// The messages of a rule's value.
fn messages(v: &Value) -> Messages {
    let text = |m: &Value| match m {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| "violation".into()),
    };
    match v {
        Value::Set(s) => s.iter().map(text).collect(),
        Value::Array(a) => a.iter().map(text).collect(),
        Value::Bool(true) => vec!["violation".into()],
        Value::String(s) if !s.is_empty() => vec![s.to_string()],
        _ => Vec::new(),
    }
}

/// Whether `word` occurs in `source` as an identifier or a string's whole content, outside
/// `#` comments.
fn mentions(source: &str, word: &str) -> bool {
    source.lines().any(|line| {
        let code = strip_comment(line);
        code.match_indices(word).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let after = code[i + word.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !ident(before) && !ident(after)
        })
    })
}

/// A line without its `#` comment (a `#` inside a string is kept).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_string => escaped = !escaped,
            '"' if !escaped => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    line
}

/// Builds an input object from `(key, value)` pairs.
pub fn object<I: IntoIterator<Item = (&'static str, Value)>>(pairs: I) -> Value {
    let mut o = Value::new_object();
    if let Ok(map) = o.as_object_mut() {
        for (k, v) in pairs {
            map.insert(Value::from(k), v);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"package main

violation[msg] {
  input.response.status_code != 200
  msg = "HTTP status code is not 200"
}

violation[msg] {
  input.response.body != "OK"
  msg = "Response body is not 'OK'"
}
"#;

    fn response(status: u64, body: &str) -> Value {
        object([("response", object([("status_code", Value::from(status)), ("body", Value::from(body))]))])
    }

    fn sorted(mut m: Messages) -> Messages {
        m.sort();
        m
    }

    #[test]
    fn the_seed_policy_loads_as_v0_and_behaves_as_written() {
        let p = Policy::compile("seed.rego", SEED, "violation", Limits::default()).unwrap();
        assert_eq!(p.entry(), "data.main.violation");
        assert!(p.reads_body());
        assert!(p.evaluate(response(200, "OK")).unwrap().is_empty());
        assert_eq!(p.evaluate(response(200, "not ok")).unwrap(), ["Response body is not 'OK'"]);
        assert_eq!(sorted(p.evaluate(response(500, "OK")).unwrap()), ["HTTP status code is not 200"]);
        assert_eq!(
            sorted(p.evaluate(response(500, "boom")).unwrap()),
            ["HTTP status code is not 200", "Response body is not 'OK'"]
        );
        // An absent body is no violation of `body != "OK"`: the comparison is undefined.
        let no_body = object([("response", object([("status_code", Value::from(200u64))]))]);
        assert!(p.evaluate(no_body).unwrap().is_empty());
    }

    #[test]
    fn v1_syntax_is_accepted_too_and_the_rule_is_configurable() {
        let src = "package authz\n\ndeny contains msg if {\n  input.attributes.request.http.method == \"DELETE\"\n  msg := \"no deletes\"\n}\n";
        let p = Policy::compile("authz.rego", src, "deny", Limits::default()).unwrap();
        assert_eq!(p.entry(), "data.authz.deny");
        assert!(!p.reads_body());
        let input = |m: &str| {
            object([(
                "attributes",
                object([("request", object([("http", object([("method", Value::from(m))]))]))]),
            )])
        };
        assert_eq!(p.evaluate(input("DELETE")).unwrap(), ["no deletes"]);
        assert!(p.evaluate(input("GET")).unwrap().is_empty());
    }

    #[test]
    fn a_syntax_error_names_the_file_line_and_column() {
        let src = "package main\n\nviolation[msg] {\n  input.x == = 1\n  msg := \"a\"\n}\n";
        let e = Policy::compile("bad.rego", src, "violation", Limits::default()).unwrap_err();
        assert_eq!(e.file, "bad.rego");
        assert_eq!((e.line, e.column), (4, 14), "{e}");
        assert_eq!(e.to_string(), "bad.rego:4:14: expecting expression");
        assert!(!e.message.is_empty());
        assert_eq!(check("bad.rego", src, "violation").unwrap_err(), e);
        assert!(check("seed.rego", SEED, "violation").is_ok());
    }

    #[test]
    fn an_evaluation_error_is_an_error_not_a_verdict() {
        let src =
            "package main\n\nviolation[msg] {\n  n := to_number(input.n)\n  n > 10\n  msg := \"big\"\n}\n";
        let p = Policy::compile("number.rego", src, "violation", Limits::default()).unwrap();
        let n = |v: &str| object([("n", Value::from(v))]);
        assert!(matches!(p.evaluate(n("abc")), Err(EvalError::Failed(_))), "a builtin's error");
        assert_eq!(p.evaluate(n("11")).unwrap(), ["big"]);
        assert!(p.evaluate(n("3")).unwrap().is_empty());
    }

    #[test]
    fn an_evaluation_past_its_limits_is_stopped() {
        let src = "package main\nimport rego.v1\n\nviolation contains n if {\n  some n in numbers.range(1, input.n)\n  n < 0\n}\n";
        let limits = Limits { time: Duration::from_millis(5) };
        let p = Policy::compile("slow.rego", src, "violation", limits).unwrap();
        let n = |v: u64| object([("n", Value::from(v))]);
        assert!(p.evaluate(n(10)).unwrap().is_empty());
        assert!(matches!(p.evaluate(n(2_000_000)), Err(EvalError::Limit(_))), "time limit");
        // The engine stopped mid-run is dropped; the next evaluation runs on a sound one.
        assert!(p.evaluate(n(10)).unwrap().is_empty());
    }

    #[test]
    fn partial_set_modules_without_calls_run_on_the_vm_and_others_on_the_interpreter() {
        let on_vm =
            |src: &str| Policy::compile("p.rego", src, "violation", Limits::default()).unwrap().on_vm();
        assert!(on_vm(SEED));
        let v1 = "package main\nimport rego.v1\n\nviolation contains \"no deletes (or puts)\" if {\n  input.method in {\"DELETE\", \"PUT\"} # a comment (with a call-like) - here\n}\n";
        assert!(on_vm(v1), "parentheses and operators inside strings and comments do not count");
        let raw = "package main\nimport rego.v1\n\nviolation contains `a (multi-line\n# not a comment` if {\n  input.x == `(`\n}\n";
        assert!(on_vm(raw), "nor inside raw strings, across lines");
        let hidden = "package main\nimport rego.v1\n\nviolation contains `a\nb` if {\n  input.x == 1 # `\n  input.y / 2 == 1\n}\n";
        assert!(!on_vm(hidden), "a backtick in a comment opens no string");
        // A call, arithmetic, a complete rule: the interpreter.
        assert!(!on_vm(
            "package main\n\nviolation[msg] {\n  startswith(input.path, \"/admin\")\n  msg := \"admin\"\n}\n"
        ));
        assert!(!on_vm("package main\n\nviolation[msg] {\n  input.n / 2 > 1\n  msg := \"big\"\n}\n"));
        assert!(!on_vm("package main\nimport rego.v1\n\nlevel := 1 if input.a\n\nviolation contains \"x\" if level == 1\n"));
    }

    #[test]
    fn a_conflict_between_complete_rules_is_an_error() {
        let src = "package main\nimport rego.v1\n\nlevel := 1 if input.a\nlevel := 2 if input.b\n\nviolation contains \"x\" if level == 1\nviolation contains \"none\" if not level\n";
        let p = Policy::compile("conflict.rego", src, "violation", Limits::default()).unwrap();
        let both = object([("a", Value::from(true)), ("b", Value::from(true))]);
        assert!(matches!(p.evaluate(both), Err(EvalError::Failed(_))));
        assert_eq!(p.evaluate(object([("a", Value::from(true))])).unwrap(), ["x"]);
    }

    #[test]
    fn the_vm_and_the_interpreter_give_the_same_messages() {
        let modules = [
            SEED,
            "package main\nimport rego.v1\n\nviolation contains msg if {\n  input.response.status_code > 299\n  msg := \"not 2xx\"\n}\n\nviolation contains \"teapot\" if input.response.status_code == 418\n",
            "package main\nimport rego.v1\n\nviolation contains h if {\n  some h, v in input.response.headers\n  v == \"\"\n}\n\nviolation contains \"no type\" if not input.response.headers[\"content-type\"]\n",
            "package main\n\nviolation[msg] {\n  not input.response.status_code == 200\n  msg := \"not 200\"\n}\n",
        ];
        let headers =
            |pairs: &[(&'static str, &str)]| object(pairs.iter().map(|&(k, v)| (k, Value::from(v))));
        let inputs = [
            response(200, "OK"),
            response(503, "down"),
            response(418, "OK"),
            object([("response", object([("status_code", Value::from("200"))]))]),
            object([(
                "response",
                object([("status_code", Value::from(true)), ("headers", headers(&[("x", "")]))]),
            )]),
            object([(
                "response",
                object([("headers", headers(&[("content-type", "text/plain"), ("y", "1")]))]),
            )]),
            Value::new_object(),
            object([("response", Value::from("not an object"))]),
        ];
        for src in modules {
            let vm = Policy::compile("m.rego", src, "violation", Limits::default()).unwrap();
            let interpreter =
                Policy::compile_with("m.rego", src, "violation", Limits::default(), false).unwrap();
            assert!(vm.on_vm() && !interpreter.on_vm(), "{src}");
            for input in &inputs {
                assert_eq!(
                    vm.evaluate(input.clone()).map(sorted),
                    interpreter.evaluate(input.clone()).map(sorted),
                    "{src} on {input}"
                );
            }
        }
    }

    #[test]
    fn a_vm_evaluation_past_its_time_limit_is_stopped() {
        let src = "package main\nimport rego.v1\n\nviolation contains x if {\n  some x in input.items\n  x == \"never\"\n}\n";
        let p = Policy::compile("slow.rego", src, "violation", Limits { time: Duration::from_millis(5) })
            .unwrap();
        assert!(p.on_vm());
        let items = |n: u64| object([("items", Value::from((0..n).map(Value::from).collect::<Vec<_>>()))]);
        assert!(p.evaluate(items(10)).unwrap().is_empty());
        assert!(matches!(p.evaluate(items(3_000_000)), Err(EvalError::Limit(_))), "time limit");
        assert!(p.evaluate(items(10)).unwrap().is_empty(), "the VM is sound after a stopped run");
    }

    #[test]
    fn body_is_detected_outside_comments_only() {
        assert!(mentions("x := input.response.body", "body"));
        assert!(mentions("x := input.response[\"body\"]", "body"));
        assert!(!mentions("x := input.response.status_code # not the body", "body"));
        assert!(!mentions("x := input.bodybuilder", "body"));
    }

    #[test]
    fn a_compiled_policy_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Policy>();
        let p =
            std::sync::Arc::new(Policy::compile("seed.rego", SEED, "violation", Limits::default()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let status = if i % 2 == 0 { 200 } else { 503 };
                        let m = p.evaluate(response(status, "OK")).unwrap();
                        assert_eq!(m.is_empty(), status == 200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

/// What one evaluation costs, printed (`cargo test --release -p meshproxy-policy evaluation_cost
/// -- --nocapture`): a request-phase policy the size of the seed's, on an OPA-Envoy input.
#[cfg(test)]
mod cost {
    use super::*;

    #[test]
    fn evaluation_cost() {
        let src = "package main\n\nviolation[msg] {\n  input.attributes.request.http.method == \"DELETE\"\n  msg = \"no deletes\"\n}\n\nviolation[msg] {\n  input.attributes.request.http.headers[\"x-block\"] == \"1\"\n  msg = \"blocked\"\n}\n";
        let input = || {
            let headers = object([("host", Value::from("a")), ("user-agent", Value::from("curl"))]);
            let http =
                object([("method", Value::from("GET")), ("path", Value::from("/")), ("headers", headers)]);
            object([("attributes", object([("request", object([("http", http)]))]))])
        };
        let n = 20_000u32;
        for vm in [true, false] {
            let limits = Limits { time: Duration::from_secs(5) };
            let p = Policy::compile_with("cost.rego", src, "violation", limits, vm).unwrap();
            assert_eq!(p.on_vm(), vm);
            let clock = std::time::SystemTime::now();
            for _ in 0..n {
                assert!(p.evaluate(input()).unwrap().is_empty());
            }
            let total = clock.elapsed().unwrap_or_default();
            let clock = std::time::SystemTime::now();
            for _ in 0..n {
                std::hint::black_box(input());
            }
            let building = clock.elapsed().unwrap_or_default();
            let on = if vm { "VM" } else { "interpreter" };
            eprintln!(
                "{on}: evaluation with its input {:?} each, building the input {:?}",
                total / n,
                building / n
            );
        }
    }
}
