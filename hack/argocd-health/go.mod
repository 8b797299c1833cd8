// Runs Argo CD health checks in gopher-lua for the chart's tests: hack/tools.sh argocd-health.
module msa.dev/hack/argocd-health

go 1.26.8

require (
	github.com/yuin/gopher-lua v1.1.2
	sigs.k8s.io/yaml v1.6.0
)

require go.yaml.in/yaml/v2 v2.4.2 // indirect
