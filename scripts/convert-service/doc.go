// Package convertservice holds the Kubernetes manifests of `sluice
// convert-service` (convert-service.yaml: Deployment, PersistentVolumeClaim,
// Service) and the registry notification snippet for docker-registry and
// distribution (registry-notifications.yml); its tests decode them into
// the Kubernetes API types and check that they fit together.
package convertservice
