package gate

import rego.v1

# OPA-Envoy's input: the request as the client sent it.
deny contains msg if {
  input.attributes.request.http.method == "DELETE"
  msg := sprintf("DELETE %s is not allowed", [input.attributes.request.http.path])
}

deny contains "x-block is set" if {
  input.attributes.request.http.headers["x-block"] == "1"
}
