// Package deploy holds the deployment files of xdpgate and edgesync: the
// Kustomize base in kubernetes/, the systemd unit and default configuration
// in systemd/. It has no code; its tests check the manifests against the
// Kubernetes API types and the agent's configuration loader, without a
// cluster.
package deploy
