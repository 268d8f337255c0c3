"""What a network costs: parameters, multiply-adds, FLOPs and latency under one protocol, on each runtime."""
