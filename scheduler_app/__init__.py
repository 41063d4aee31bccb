"""The platform: beat/ (scheduling), runs/ (the worker side), monitoring/, local/ (`make run`
only), the three doors (admin/, api/, management/) and what they share at this level."""
