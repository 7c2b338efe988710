"""Start, query and stop the local model server as a background process.

State (pid, URL, model version) lives in ``<data_dir>/deploy_target-local/endpoint.json``
so that ``up``, ``invoke``, ``status`` and ``down`` work across separate CLI calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TYPE_CHECKING

from loyaltylens_core.kernel.contracts import CustomerFeatures
from loyaltylens_core.kernel.errors import StageError, UsageError
from loyaltylens_core.sdk.archive import TARGET_MODEL_HEADER, read_manifest, target_model_for
from loyaltylens_core.sdk.variants import VARIANT_HEADER, check_weights, read_variants

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_deploy_local import LocalDeploySettings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class LocalDeployTarget:
    def __init__(self, settings: LocalDeploySettings, context: StageContext) -> None:
        self.settings = settings
        self.state_file = context.plugin_dir() / "endpoint.json"
        self.log_file = context.plugin_dir() / "server.log"

    def _state(self) -> dict[str, Any] | None:
        if not self.state_file.is_file():
            return None
        state = json.loads(self.state_file.read_text())
        return state if _alive(int(state["pid"])) else None

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float = 10,
                 headers: dict[str, str] | None = None) -> Any:
        return self._exchange(method, path, body, timeout, headers)[0]

    def _exchange(self, method: str, path: str, body: bytes | None = None, timeout: float = 10,
                  headers: dict[str, str] | None = None) -> tuple[Any, Any]:
        """The reply's JSON and its headers."""
        state = self._state()
        if state is None:
            raise UsageError("no local endpoint is running", "start one with `loyaltylens deploy up`")
        request = urllib.request.Request(
            state["url"] + path, data=body, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read()), response.headers
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise StageError(f"local endpoint answered {exc.code}: {detail}", "check the request") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise StageError(f"local endpoint {state['url']} is not answering ({exc})",
                             "see server.log, or restart with `loyaltylens deploy up`") from None

    def up(self, archive: Path) -> dict[str, Any]:
        archive = Path(archive).resolve()
        variants = read_variants(archive) if archive.is_dir() else None
        multi_model = archive.is_dir() and variants is None
        if multi_model and not any(archive.glob("*.tar.gz")):
            raise UsageError(f"{archive} holds no model archives (*.tar.gz) for a multi-model endpoint",
                             "run `loyaltylens deploy package --multi-model`")
        if not archive.is_dir() and not archive.is_file():
            raise UsageError(f"model archive {archive} does not exist", "run `loyaltylens deploy package`")
        if self._state() is not None:
            self.down()
        ready = self.state_file.with_name("ready.json")
        ready.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "loyaltylens_deploy_local.server", "--archive", str(archive),
                 "--host", self.settings.host, "--port", str(self.settings.port),
                 "--max-body", str(self.settings.max_body_bytes), "--ready-file", str(ready),
                 "--workdir", str(self.state_file.parent / "serving"),
                 "--body-timeout", str(self.settings.body_timeout_s),
                 "--header-timeout", str(self.settings.header_timeout_s),
                 "--max-models", str(self.settings.max_models)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not ready.is_file():
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-1:]
                raise StageError(f"local model server exited at start: {tail[0] if tail else proc.returncode}",
                                 f"see {self.log_file}")
            if time.monotonic() > deadline:
                proc.kill()
                raise StageError("local model server did not start in time", f"see {self.log_file}")
            time.sleep(0.05)
        address = json.loads(ready.read_text())
        ready.unlink()
        state = {"pid": proc.pid, "url": f"http://{address['host']}:{address['port']}", "archive": str(archive),
                 "multi_model": multi_model}
        self.state_file.write_text(json.dumps(state))
        ping = self._request("GET", "/ping")
        state["model_version"] = ping.get("model_version")
        self.state_file.write_text(json.dumps(state))
        out = {"status": "InService", "url": state["url"], "model_version": state["model_version"], "pid": proc.pid}
        if multi_model:
            out["target_models"] = sorted(p.name for p in archive.glob("*.tar.gz"))
        if variants is not None:
            out["variants"] = ping["variants"]
        return out

    def update_weights(self, weights: dict[str, float]) -> dict[str, Any]:
        """A new traffic split on the running endpoint (no restart, nothing reloaded)."""
        state = self._state()
        variants = read_variants(Path(state["archive"])) if state and Path(state["archive"]).is_dir() else None
        if variants is None:
            raise UsageError("the local endpoint has no production variants",
                             "start one with `loyaltylens deploy up --variants champion=90,challenger=10`")
        named = check_weights(weights, list(variants["variants"]))
        return dict(self._request("POST", "/variants/weights", json.dumps(named).encode()))

    def invoke(self, features: CustomerFeatures, target_model: str | None = None) -> dict[str, Any]:
        """Score on the endpoint. On a multi-model endpoint the archive is ``target_model``,
        else the one of the customer's segment (the package's models.json), else global."""
        body = features.model_dump_json().encode()
        state = self._state() or {}
        if not state.get("multi_model"):
            if target_model:
                raise UsageError("the local endpoint serves one model, so it takes no target model",
                                 "deploy a multi-model package: `loyaltylens deploy up --multi-model`")
            reply, headers = self._exchange("POST", "/invocations", body)
            variant = headers.get(VARIANT_HEADER)
            return {**reply, "variant": variant} if variant else dict(reply)
        if target_model is None:
            target_model = target_model_for(read_manifest(Path(state["archive"])), features)
        reply = dict(self._request("POST", "/invocations", body, headers={TARGET_MODEL_HEADER: target_model}))
        reply["target_model"] = target_model
        return reply

    def invoke_model(self, features: CustomerFeatures, target_model: str) -> dict[str, Any]:
        """``invoke`` with a named archive of the deployed multi-model package (ServesManyModels)."""
        return self.invoke(features, target_model=target_model)

    def status(self) -> dict[str, Any]:
        state = self._state()
        if state is None:
            return {"status": "absent"}
        try:
            self._request("GET", "/ping", timeout=2)
            health = "InService"
        except StageError:
            health = "Unhealthy"
        return {"status": health, "url": state["url"], "model_version": state.get("model_version"),
                "pid": state["pid"]}

    def down(self) -> dict[str, Any]:
        state = self._state()
        if state is None:
            self.state_file.unlink(missing_ok=True)
            return {"status": "absent"}
        pid = int(state["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return {"status": "deleted", "url": state["url"]}
