// Package deploy holds Unigate's deployment files (systemd, sysctl,
// limits, container, Kubernetes, monitoring) and the tests that check
// them: the unit passes systemd-analyze verify, the Kubernetes overlays
// render and decode strictly into the Kubernetes API types, the bundle
// ships no reference to an external host. It has no Go API; see
// docs/deploy.md and docs/operations.md.
package deploy
