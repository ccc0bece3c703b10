// Command pause is the pod sandbox ("pause") container's process for the local node: it
// holds the pod's namespaces, reaps children (it is PID 1 when a pod shares its PID
// namespace) and exits on SIGINT/SIGTERM, like Kubernetes' own pause.c. Built static, it is
// the only file of the sandbox image, so the node needs no registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
