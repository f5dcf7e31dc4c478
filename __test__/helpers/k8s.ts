/** Kubernetes manifests for tests: a Service and the EndpointSlice that gives it endpoints. */

/** Service `name` (port 80, named http) with one endpoint at 127.0.0.1:`port`, as YAML documents. */
export const k8sService = (name: string, port: number): string => `---
apiVersion: v1
kind: Service
metadata: { name: ${name} }
spec:
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${name}-1, labels: { kubernetes.io/service-name: ${name} } }
ports: [{ name: http, port: ${port} }]
endpoints: [{ addresses: ["127.0.0.1"] }]
`
