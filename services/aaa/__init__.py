"""The reference RADIUS server: a real worker pool behind UDP, with Status-Server."""
