from blspdata.cli import app

if __name__ == "__main__":  # guarded: engines that spawn workers (vLLM) re-import the main module
    app(prog_name="blspdata")
