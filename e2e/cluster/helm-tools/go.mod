// Tools module: builds the helm v3 CLI. Its own module so its k8s.io/* versions (v0.32)
// do not mix with the control plane's.
module statmux.local/e2e/cluster/helm-tools

go 1.24.0

tool helm.sh/helm/v3/cmd/helm

require helm.sh/helm/v3 v3.17.4
