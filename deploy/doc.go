// Package deploy holds onebox's deployment files (systemd units, a compose file
// and its Dockerfile, the Pi and Podman notes) and the tests that check them:
// the units parse, name commands and flags the onebox binary has, and pass
// `systemd-analyze verify` where it runs; the compose file parses, names the
// expected services and passes `docker compose config`; Podman's Docker-
// compatible socket runs onebox's container runtime (podman_test.go).
package deploy
