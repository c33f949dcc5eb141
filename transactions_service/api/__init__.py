"""HTTP in, HTTP out: the views, and the schemas that validate what comes in and render what goes out."""
