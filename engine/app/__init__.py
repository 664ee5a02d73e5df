"""The app layer: the `engine` command line, the HTTP server and its client."""
