"""The cluster: session affinity, relaying a request to the process that owns it, each process's private port."""
