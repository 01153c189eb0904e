from kdray.cli import app

app()
