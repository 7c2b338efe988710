"""Load a model archive in the real SageMaker PyTorch serving handler, in-process.

The SageMaker PyTorch container runs TorchServe, whose worker calls the toolkit's
``HandlerService().initialize(context)`` once and ``.handle(data, context)`` per request.
Doing the same here, against the extracted archive, proves before any money is spent that
the container can load ``model.pt`` and run ``code/inference.py``. Needs the
``sagemaker-pytorch-inference`` package (``pip install loyaltylens-deploy-sagemaker[test]``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from loyaltylens_core.sdk.archive import safe_extract
from loyaltylens_core.kernel.errors import StageError


class _RequestProcessor:
    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers


class ServingContext:
    """The parts of TorchServe's ``ts.context.Context`` the SageMaker toolkit reads."""

    model_name = "model"

    def __init__(self, model_dir: Path, headers: dict[str, str]) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.request_processor = [_RequestProcessor(headers)]
        self.response_content_types: dict[int, str] = {}
        self.status: tuple[int, str] | None = None

    def set_response_content_type(self, index: int, content_type: str) -> None:
        self.response_content_types[index] = content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = (code, phrase)


def invoke_in_container_handler(archive: Path, instances: list[dict[str, Any]]) -> list[Any]:
    """Initialise the real handler on the archive and send each instance as a JSON request.

    Raises the toolkit's ``ModelLoadError`` when model.pt is not loadable TorchScript.
    """
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    with tempfile.TemporaryDirectory(prefix="ll-sm-check-") as work:
        model_dir = safe_extract(Path(archive), Path(work) / "model")
        code_dir = str(model_dir / "code")
        sys.path.insert(0, code_dir)
        sys.modules.pop("inference", None)  # each archive brings its own inference.py
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            context = ServingContext(model_dir, headers)
            service = HandlerService()
            service.initialize(context)
            replies = []
            for instance in instances:
                out = service.handle([{"body": json.dumps(instance).encode()}], context)
                if context.status is not None and context.status[0] >= 400:
                    first = out[0].splitlines()[0] if out and out[0] else ""
                    raise StageError(f"the container handler answered {context.status[0]}: {first[:200]}",
                                     "check the request and code/inference.py")
                replies.append(json.loads(out[0]))
            return replies
        finally:
            sys.path.remove(code_dir)
            sys.modules.pop("inference", None)
