"""``make serve``: start `prefect server start` on 127.0.0.1 (unless one answers) and serve every
recipe deployment on its cron schedule with ``flow.serve``. Ctrl-C stops both."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

HOST, PORT = "127.0.0.1", int(os.environ.get("SYNTHFLOW_PREFECT_PORT", "4200"))
API = f"http://{HOST}:{PORT}/api"


def _up() -> bool:
    try:
        return httpx.get(f"{API}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")  # no upgrade pop-up
    server = None
    if not _up():
        print(f"starting prefect server on {HOST}:{PORT} (logs: .prefect/server.log)")
        os.makedirs(os.environ.get("PREFECT_HOME", ".prefect"), exist_ok=True)
        with open(os.path.join(os.environ.get("PREFECT_HOME", ".prefect"), "server.log"), "ab") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(PORT)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for _ in range(120):
            if _up():
                break
            time.sleep(1)
        else:
            print("prefect server did not come up; see .prefect/server.log", file=sys.stderr)
            server.terminate()
            return 2
    os.environ["PREFECT_API_URL"] = API
    print(f"serving deployments against {API} (UI: http://{HOST}:{PORT}); Ctrl-C to stop")
    from flows.deployments import serve_all

    try:
        serve_all(sys.argv[1:] or None)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
