"""The Huawei agent gateway's HTTP edge: its envelope, request parsing and routes over the gateway's domain."""
