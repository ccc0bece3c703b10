// Command gpu-plugin is a GPU stand-in for a node without GPUs: a kubelet device plugin
// (the v1beta1 gRPC API, as NVIDIA's plugin) that advertises N healthy devices of a resource
// (default nvidia.com/gpu), so pods that request GPUs schedule and start unchanged. Its
// Allocate answer sets environment variables in the container (given with --env, e.g.
// STATMUX_DEVICE=cpu), which is how the workload learns there is no real GPU behind it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type envFlag map[string]string

func (e envFlag) String() string { return fmt.Sprint(map[string]string(e)) }
func (e envFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("--env wants NAME=VALUE, got %q", v)
	}
	e[k] = val
	return nil
}

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
	env     map[string]string
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the device list once; the devices never change, so it then waits for
// the kubelet to close the stream.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	out := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		ids := append([]string(nil), c.DevicesIDs...)
		sort.Strings(ids)
		env := map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(ids, ",")}
		for k, v := range p.env {
			env[k] = v
		}
		log.Printf("allocate %v", ids)
		out.ContainerResponses = append(out.ContainerResponses, &pluginapi.ContainerAllocateResponse{Envs: env})
	}
	return out, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve starts the plugin's gRPC server on its socket and registers it with the kubelet.
func serve(p *plugin, dir, endpoint, resource string) (*grpc.Server, error) {
	sock := filepath.Join(dir, endpoint)
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(lis) }()

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, filepath.Base(pluginapi.KubeletSocket)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: endpoint, ResourceName: resource,
	})
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("register %s with the kubelet: %w", resource, err)
	}
	log.Printf("registered %s: %d devices on %s", resource, len(p.devices), sock)
	return srv, nil
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory")
	resource := flag.String("resource", "nvidia.com/gpu", "extended resource to advertise")
	count := flag.Int("count", 8, "number of devices")
	endpoint := flag.String("endpoint", "statmux-gpu-stand-in.sock", "socket name in --dir")
	env := envFlag{}
	flag.Var(env, "env", "NAME=VALUE set in every allocated container (repeatable)")
	flag.Parse()
	if *count < 1 {
		log.Fatalf("--count must be at least 1, got %d", *count)
	}
	p := &plugin{env: env}
	for i := 0; i < *count; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("stand-in-%d", i), Health: pluginapi.Healthy})
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	sock := filepath.Join(*dir, *endpoint)
	var srv *grpc.Server
	for {
		// (Re)register whenever our socket is gone: the kubelet wipes the directory when it
		// restarts, and a plugin must then register again.
		if _, err := os.Stat(sock); srv == nil || err != nil {
			if srv != nil {
				srv.Stop()
				srv = nil
			}
			s, err := serve(p, *dir, *endpoint, *resource)
			if err != nil {
				log.Printf("%v (retrying)", err)
			} else {
				srv = s
			}
		}
		select {
		case <-stop:
			if srv != nil {
				srv.Stop()
			}
			_ = os.Remove(sock)
			return
		case <-time.After(time.Second):
		}
	}
}
