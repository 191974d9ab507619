"""The MegaByte studio for people: the web app (`python -m app`) and the command line (`python -m app.cli`)."""
