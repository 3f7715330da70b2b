"""The four agents (observer, analyst, engineer, librarian), their settings, and the methods they share."""
