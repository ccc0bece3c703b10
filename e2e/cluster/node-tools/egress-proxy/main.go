// Command statmux-egress-proxy lets the apiserver (in the host's network namespace) reach the
// real node's kubelet (in the node's private network namespace) for `kubectl logs/exec/
// port-forward`, without any route or rule in the host: it runs inside the node's network
// namespace and serves HTTP CONNECT on a unix socket (a filesystem path, so the apiserver
// reaches it from the host namespace), the apiserver's egress selector ("cluster" traffic,
// proxyProtocol HTTPConnect over uds) sends its kubelet connections there.
package main

import (
	"bufio"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	socket := flag.String("socket", "", "unix socket to serve HTTP CONNECT on (created 0600)")
	flag.Parse()
	if *socket == "" {
		log.Fatal("--socket is required")
	}
	_ = os.Remove(*socket)
	syscall.Umask(0o077)
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatalf("listen %s: %v", *socket, err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; ln.Close(); os.Remove(*socket); os.Exit(0) }()
	log.Printf("serving HTTP CONNECT on %s", *socket)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("accept: %v", err)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		log.Printf("bad request: %v", err)
		return
	}
	if req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	target := req.URL.Host
	up, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		log.Printf("dial %s: %v", target, err)
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	// The apiserver refuses a reply with extra bytes after it, so nothing but the status line.
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); closeWrite(up); done <- struct{}{} }()
	go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
