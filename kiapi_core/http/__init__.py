"""HTTP plumbing shared by all routes: responses, errors, negotiation, auth, operation routes."""
