"""The Kubernetes CRI plugin (io.containerd.grpc.v1.cri): config, services, adapters."""
