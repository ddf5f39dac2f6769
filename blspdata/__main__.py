from blspdata.cli import app

app(prog_name="blspdata")
