"""The GWS v2 REST edge: its envelope, routes and OpenAPI document; it translates to and from the domain."""
