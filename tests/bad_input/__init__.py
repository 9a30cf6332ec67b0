"""Bad-input suite: every user error is one clear line, never a traceback."""
