"""`loyaltylens plugin new NAME --stage STAGE`: write a ready plugin package.

The package installs with ``pip install -e`` and its tests pass as generated (CI proves it
for every stage): a pyproject with the entry point, a settings model, a lazy factory, a
component that satisfies the stage Protocol with a small working implementation to
replace, a test through the ``loyaltylens_pipeline`` fixture, and a README.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import tempfile
from pathlib import Path

from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.kernel.stages import STAGE_BY_NAME, STAGES

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

# Per stage: the settings fields, the component's imports and body, and the test body.
# $cls is the component class, $name the registered name, $pkg the import package.
COMPONENTS: dict[str, dict[str, str]] = {
    "feature_store": {
        "settings": '    feature_version: str = "v1"\n',
        "imports": "import datetime as dt\nfrom typing import TYPE_CHECKING\n\n"
                   "from loyaltylens_core.kernel.contracts import CustomerFeatures\n"
                   "from loyaltylens_core.kernel.errors import CustomerNotFound\n",
        "body": '''
class $cls:
    """Features for a few customers held in memory: replace ``ROWS`` with reads from your store.

    ``read_latest`` must return features as of ``as_of`` (or the latest snapshot), and raise
    ``CustomerNotFound`` for an id it does not know (``batch`` then lists it as a reject).
    """

    ROWS = {
        "C001": dict(recency_days=3.0, frequency_30d=4, monetary_90d=320.5, offer_redemption_rate=0.4,
                     channel_preference="mobile", engagement_score=0.7, tier="gold"),
        "C002": dict(recency_days=40.0, frequency_30d=0, monetary_90d=12.0, offer_redemption_rate=0.0,
                     channel_preference="web", engagement_score=0.1, tier="bronze"),
    }

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.settings = settings

    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures:
        try:
            row = self.ROWS[customer_id]
        except KeyError:
            raise CustomerNotFound(f"customer {customer_id!r} not found", "check the id") from None
        return CustomerFeatures(customer_id=customer_id, as_of=as_of or dt.date.today(),
                                feature_version=self.settings.feature_version, **row)

    def customer_ids(self) -> list[str]:
        """Optional (ListsCustomers): lets ``loyaltylens batch --all`` list every customer."""
        return sorted(self.ROWS)
''',
        "test": '''
def test_runs_a_known_customer_and_rejects_an_unknown_one(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["feature_store=$name"])
    result = pipeline.run("C001")
    assert result.features.feature_version == "v1" and result.features.tier == "gold"
    with pytest.raises(CustomerNotFound):
        pipeline.run("NOBODY")
    assert "ListsCustomers" in pipeline.capabilities("feature_store")
''',
        "test_imports": "import pytest\n\nfrom loyaltylens_core.kernel.errors import CustomerNotFound\n",
    },
    "propensity": {
        "settings": "    threshold: float = 0.5\n",
        "imports": "import math\nfrom typing import TYPE_CHECKING\n\n"
                   "from loyaltylens_core.kernel.contracts import CustomerFeatures, PropensityScore\n",
        "body": '''
class $cls:
    """A hand-set logistic score: replace ``predict`` with your model.

    The score must be a probability in [0, 1]: an offer is eligible when its
    ``min_propensity_threshold`` is at or below it.
    """

    version = "$name-1"

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.settings = settings

    def predict(self, features: CustomerFeatures) -> PropensityScore:
        z = 3.0 * features.engagement_score + 2.0 * features.offer_redemption_rate
        z -= 0.02 * features.recency_days + 1.5
        score = 1.0 / (1.0 + math.exp(-z))
        return PropensityScore(customer_id=features.customer_id, score=score,
                               label=1 if score >= self.settings.threshold else 0, model_version=self.version)
''',
        "test": '''
def test_scores_are_probabilities_and_engaged_customers_score_higher(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["propensity=$name"])
    result = pipeline.run("C001")
    assert 0.0 <= result.propensity.score <= 1.0 and result.propensity.model_version == "$name-1"
    model = pipeline.component("propensity")
    low, high = make_features(engagement_score=0.0), make_features(engagement_score=1.0)
    assert model.predict(high).score > model.predict(low).score
''',
        "test_imports": "from loyaltylens_core.sdk.testing import make_features\n",
    },
    "embedder": {
        "settings": "    dimension: int = 64\n",
        "imports": "import hashlib\nfrom typing import TYPE_CHECKING, Sequence\n\nimport numpy as np\n",
        "body": '''
class $cls:
    """Hashed bag of words: replace ``embed`` with your model (load it lazily, on first use).

    Returns one L2-normalised float32 row per text.
    """

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.dimension = settings.dimension
        self.name = "$name"  # part of a retriever's index fingerprint: change it when vectors change

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)
''',
        "test": '''
def test_vectors_are_normalised_and_deterministic(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["embedder=$name"])
    embedder = pipeline.component("embedder")
    vectors = embedder.embed(["free coffee", "free coffee", "triple points"])
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert np.array_equal(vectors[0], vectors[1]) and not np.array_equal(vectors[0], vectors[2])
''',
        "test_imports": "import numpy as np\n\n",
    },
    "retriever": {
        "settings": "    catalogue: Path | None = None  # offers JSON; default: the demo catalogue\n",
        "settings_imports": "from pathlib import Path\n",
        "imports": "from pathlib import Path\nfrom typing import TYPE_CHECKING\n\nimport numpy as np\n\n"
                   "from loyaltylens_core.kernel.contracts import Offer, OfferCandidate, RetrievalQuery\n"
                   "from loyaltylens_core.sdk.demo import demo_data\n"
                   "from loyaltylens_core.sdk.offers import load_catalogue, offer_text\n",
        "body": '''
class $cls:
    """Exact cosine search over the catalogue in memory: replace with your vector store.

    What a retriever must honour: keep only offers whose ``min_propensity_threshold`` is at or
    below ``query.max_threshold`` (``None``: no filter) and, when ``query.tier`` is set, offers
    that tier may see; return at most ``query.k`` candidates, best first, ranks from 1.
    Returning ``[]`` is fine: the pipeline retries without the threshold and records it.
    """

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.settings = settings
        self.context = context
        self.embedder = context.component("embedder")
        self.offers: list[Offer] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)

    def prepare(self) -> None:
        """Optional (Preparable): called once before first use; embed the catalogue here."""
        if self.offers:
            return
        path = self.settings.catalogue or demo_data(self.context).offers_json
        self.offers = load_catalogue(Path(path))
        self.vectors = np.asarray(self.embedder.embed([offer_text(o) for o in self.offers]), dtype=np.float32)

    def retrieve(self, query: RetrievalQuery) -> list[OfferCandidate]:
        self.prepare()
        vector = np.asarray(self.embedder.embed([query.text]), dtype=np.float32)[0]
        similarity = self.vectors @ vector
        order = np.argsort(-similarity, kind="stable")
        kept = [
            i for i in order
            if (query.max_threshold is None or self.offers[i].min_propensity_threshold <= query.max_threshold)
            and (query.tier is None or query.tier in self.offers[i].tiers)
        ][: query.k]
        return [OfferCandidate(offer=self.offers[i], similarity=float(similarity[i]), rank=rank)
                for rank, i in enumerate(kept, start=1)]
''',
        "test": '''
def test_honours_the_threshold_and_ranks_from_one(loyaltylens_pipeline, tmp_path, monkeypatch):
    catalogue = tmp_path / "offers.json"
    catalogue.write_text(json.dumps([
        {"offer_id": "A", "title": "Free coffee", "description": "a free coffee", "category": "free_item",
         "min_propensity_threshold": 0.1},
        {"offer_id": "B", "title": "Triple points", "description": "triple points", "category": "points",
         "min_propensity_threshold": 0.9},
    ]))
    monkeypatch.setenv("LOYALTYLENS_RETRIEVER_${envname}__CATALOGUE", str(catalogue))
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["retriever=$name"])
    retriever = pipeline.component("retriever")
    found = retriever.retrieve(RetrievalQuery(customer_id="C001", text="free coffee", k=3, max_threshold=0.5))
    assert [c.offer.offer_id for c in found] == ["A"] and found[0].rank == 1
    assert pipeline.run("C001").top_offer is not None
''',
        "test_imports": "import json\n\nfrom loyaltylens_core.kernel.contracts import RetrievalQuery\n",
    },
    "decision": {
        "settings": "    min_value: float = 0.0  # offers worth less are never handed out\n",
        "imports": "from typing import TYPE_CHECKING\n\n"
                   "from loyaltylens_core.kernel.contracts import Decision, DecisionRequest, OfferCandidate\n",
        "body": '''
class $cls:
    """Hands out the most valuable offers worth at least ``min_value``: replace ``decide``
    with your arbitration (a bandit, a margin model, a call to your decisioning service).

    What a decider must honour: choose at most ``request.placement.k`` offers, only from
    ``request.candidates``, ranks from 1; when ``request.enforce_threshold`` is set, drop
    offers whose ``min_propensity_threshold`` is above the customer's score; say in
    ``dropped`` (reason -> count) why the others were left out. Anything with caps must be
    counted before ``decide`` returns (see loyaltylens-decision-rules).
    """

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.min_value = settings.min_value

    def decide(self, request: DecisionRequest) -> Decision:
        score = request.propensity.score
        dropped: dict[str, int] = {}
        kept = []
        for c in request.candidates:
            if request.enforce_threshold and c.offer.min_propensity_threshold > score:
                dropped["below_threshold"] = dropped.get("below_threshold", 0) + 1
            elif c.offer.value < self.min_value:
                dropped["ineligible"] = dropped.get("ineligible", 0) + 1
            else:
                kept.append(c)
        kept.sort(key=lambda c: (-c.offer.value, -c.similarity, c.offer.offer_id))
        chosen = tuple(OfferCandidate(offer=c.offer, similarity=c.similarity, rank=n)
                       for n, c in enumerate(kept[: request.placement.k], start=1))
        return Decision(placement=request.placement.name, chosen=chosen, dropped=dropped,
                        considered=len(request.candidates), ranking="value")
''',
        "test": '''
def test_hands_out_the_most_valuable_offers_first(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["decision=$name"])
    result = pipeline.run("C001")
    values = [c.offer.value for c in result.candidates]
    assert values == sorted(values, reverse=True) and [c.rank for c in result.candidates] == list(range(1, len(values) + 1))
    assert result.decision.placement == "default" and result.decision.ranking == "value"
''',
        "test_imports": "",
    },
    "generator": {
        "settings": '    prompt_version: str = "$name-v1"\n',
        "imports": "from typing import TYPE_CHECKING, Any\n\nfrom loyaltylens_core.kernel.adapters import check_template, render\n"
                   "from loyaltylens_core.kernel.contracts import GeneratedCopy\n",
        "body": '''
class $cls:
    """Fills templates from the adapter's variables: replace ``generate`` with your model.

    ``variables`` holds what ``loyaltylens_core.kernel.adapters.TEMPLATE_VARIABLES`` declares
    (offer_title, offer_description, tier_title, channel_phrase, ...).
    """

    HEADLINE = "{tier_title} member: {offer_title}"
    CTA = "Shop {channel_phrase}"

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.prompt_version = settings.prompt_version
        for template, where in ((self.HEADLINE, "headline"), (self.CTA, "cta")):
            check_template(template, where)  # a placeholder the adapter cannot fill fails at start-up

    def generate(self, variables: dict[str, Any]) -> GeneratedCopy:
        return GeneratedCopy(headline=render(self.HEADLINE, variables), body=variables["offer_description"],
                             cta=render(self.CTA, variables), prompt_version=self.prompt_version)
''',
        "test": '''
def test_writes_copy_for_the_top_offer(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["generator=$name"])
    result = pipeline.run("C001")
    assert result.copy_.prompt_version == "$name-v1"  # copy_: `copy` is pydantic's method; JSON says "copy"
    assert result.top_offer.title in result.copy_.headline
''',
        "test_imports": "",
    },
    "deploy_target": {
        "settings": '    endpoint_name: str = "loyaltylens-propensity"\n',
        "imports": "from typing import TYPE_CHECKING, Any\n\nfrom loyaltylens_core.kernel.contracts import CustomerFeatures\n"
                   "from loyaltylens_core.kernel.errors import StageError\n",
        "body": '''
class $cls:
    """Keeps the endpoint's state in memory: replace with calls to your serving platform.

    ``up`` receives the model archive path (model.pt, spec.json, inference.py); ``invoke``
    returns at least ``propensity_score`` and ``model_version``.
    """

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.settings = settings
        self.archive: Any = None

    def up(self, archive: Any) -> dict[str, Any]:
        self.archive = archive
        return self.status()

    def invoke(self, features: CustomerFeatures) -> dict[str, Any]:
        if self.archive is None:
            raise StageError(f"endpoint {self.settings.endpoint_name!r} is not deployed", "run loyaltylens deploy up")
        return {"propensity_score": features.engagement_score, "model_version": "$name"}

    def status(self) -> dict[str, Any]:
        return {"endpoint": self.settings.endpoint_name, "status": "InService" if self.archive else "absent"}

    def down(self) -> dict[str, Any]:
        self.archive = None
        return self.status()
''',
        "test": '''
def test_up_invoke_down(loyaltylens_pipeline, tmp_path):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["deploy_target=$name"])
    target = pipeline.component("deploy_target")
    with pytest.raises(StageError):
        target.invoke(make_features())
    assert target.up(tmp_path / "model.tar.gz")["status"] == "InService"
    assert 0 <= target.invoke(make_features())["propensity_score"] <= 1
    assert target.down()["status"] == "absent"
''',
        "test_imports": "import pytest\n\nfrom loyaltylens_core.kernel.errors import StageError\n"
                        "from loyaltylens_core.sdk.testing import make_features\n",
    },
    "batch_engine": {
        "settings": "    max_chunks: int = 0  # 0: no limit; else stop after this many chunks (a rerun resumes)\n",
        "imports": "from typing import TYPE_CHECKING, Any\n",
        "body": '''
class $cls:
    """Computes chunks in this process: replace ``run`` with dispatch to your cluster.

    For each ``(index, customer_ids)`` of ``job.chunks``, produce the rows of
    ``job.pipeline.run_chunk`` (on a worker: ``pipeline.rows_for(features)``), hand them to
    ``job.write_part(index, rows, rejected)`` from this process, and ``job.advance(n)``.
    The core resumes from the parts written and merges them.
    """

    workers = 1

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.settings = settings

    def run(self, job: Any) -> None:
        for done, (index, chunk) in enumerate(job.chunks):
            if self.settings.max_chunks and done >= self.settings.max_chunks:
                return
            rejected: dict[str, Any] = {}
            rows = job.pipeline.run_chunk(chunk, rejects=rejected)
            job.write_part(index, rows, rejected)
            job.advance(len(chunk))
''',
        "test": '''
def test_writes_every_chunk_and_resumes(loyaltylens_pipeline, tmp_path, monkeypatch):
    out = tmp_path / "results.parquet"
    monkeypatch.setenv("LOYALTYLENS_BATCH_ENGINE_${envname}__MAX_CHUNKS", "1")
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["batch_engine=$name"])
    with pytest.raises(PluginError):  # stopped after one chunk: the core says parts are missing
        run_batch(pipeline, ["C001", "C002", "C003"], out, chunk_size=1)
    monkeypatch.delenv("LOYALTYLENS_BATCH_ENGINE_${envname}__MAX_CHUNKS")
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["batch_engine=$name"])
    summary = run_batch(pipeline, ["C001", "C002", "C003"], out, chunk_size=1)
    assert summary.customers == 3 and summary.resumed == 1 and summary.computed == 2
''',
        "test_imports": "import pytest\n\nfrom loyaltylens_core.batch import run_batch\nfrom loyaltylens_core.kernel.errors import PluginError\n",
    },
    "feedback_store": {
        "settings": "    max_impressions: int = 1_000_000  # held in memory; the oldest are dropped beyond this\n",
        "imports": "import datetime as dt\nfrom typing import TYPE_CHECKING, Any\n",
        "body": '''
class $cls:
    """Impressions and outcomes in memory: replace with writes to your warehouse or stream.

    Tables are Arrow (``loyaltylens_core.kernel.feedback``): keep the first row per impression
    and per (impression, event), as reports expect.
    """

    def __init__(self, settings: Settings, context: StageContext) -> None:
        from loyaltylens_core.kernel.feedback import impression_schema, outcome_schema

        self.settings = settings
        self.impressions = impression_schema().empty_table()
        self.outcomes = outcome_schema().empty_table()

    def record_impressions(self, impressions: Any) -> None:
        import pyarrow as pa

        table = pa.concat_tables([self.impressions, impressions])
        self.impressions = table.slice(max(0, table.num_rows - self.settings.max_impressions))

    def record_outcomes(self, outcomes: Any, check: bool = True) -> dict[str, Any]:
        import pyarrow as pa

        from loyaltylens_core.kernel.feedback import screen_outcomes

        known = set(self.impressions["impression_id"].to_pylist()) if check else None
        held = set(zip(self.outcomes["impression_id"].to_pylist(), self.outcomes["event"].to_pylist()))
        keep, repeats, unknown = screen_outcomes(outcomes, known, held)
        self.outcomes = pa.concat_tables([self.outcomes, outcomes.take(pa.array(keep, pa.int64()))])
        return {"added": len(keep), "duplicates": repeats, "unknown": unknown}

    def impressions_with_outcomes(self, since: dt.datetime | None = None) -> Any:
        import pyarrow.compute as pc

        from loyaltylens_core.kernel.feedback import join_outcomes

        joined = join_outcomes(self.impressions, self.outcomes)
        return joined if since is None else joined.filter(pc.greater_equal(joined["shown_at"], since))
''',
        "test": '''
def test_keeps_impressions_and_joins_their_outcomes(loyaltylens_pipeline):
    import pyarrow as pa

    from loyaltylens_core.kernel.feedback import outcome_schema

    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["feedback_store=$name"])
    store = pipeline.component("feedback_store")
    result = pipeline.run("C001")
    pipeline.close()  # impressions are buffered: closing the pipeline writes them
    outcome = pa.table({"impression_id": [result.run_id, "nobody"], "event": ["redeemed", "viewed"],
                        "rating": [5, None], "at": [result.created_at] * 2}, schema=outcome_schema())
    assert store.record_outcomes(outcome) == {"added": 1, "duplicates": 0, "unknown": [1]}
    (row,) = store.impressions_with_outcomes().to_pylist()
    assert row["impression_id"] == result.run_id and row["redeemed"] and row["rating"] == 5
''',
        "test_imports": "",
    },
    "tracking": {
        "settings": "    file_name: str = \"runs.jsonl\"  # in the plugin's directory under the data dir\n",
        "imports": "import json\nfrom pathlib import Path\nfrom typing import TYPE_CHECKING, Any\n",
        "body": '''
class $cls:
    """Appends each training run to a JSON-lines file: replace with calls to your tracker.

    ``card`` is the model card (``history`` holds one entry per epoch); ``model_dir`` the
    trained version's directory, or None.
    """

    def __init__(self, settings: Settings, context: StageContext) -> None:
        self.path = context.plugin_dir() / settings.file_name

    def log_training(self, card: dict[str, Any], model_dir: Path | None) -> dict[str, Any]:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"card": card, "model_dir": str(model_dir) if model_dir else None}) + "\\n")
        return {"runs_file": str(self.path)}
''',
        "test": '''
def test_logs_each_training_run(loyaltylens_pipeline):
    import json

    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["tracking=$name"])
    tracker = pipeline.component("tracking")
    out = tracker.log_training({"model_version": "m1", "history": [{"epoch": 1, "train_loss": 0.5}]}, None)
    (line,) = open(out["runs_file"]).read().splitlines()
    assert json.loads(line)["card"]["model_version"] == "m1"
''',
        "test_imports": "",
    },
}

INIT = '''"""LoyaltyLens $stage plugin ``$name``: $summary.

Registered through the ``loyaltylens`` entry point in pyproject.toml. This module is
imported by ``loyaltylens --help`` and ``loyaltylens plugins``: keep it cheap, and import
heavy libraries in ``build`` (or later), not here.
"""

from __future__ import annotations

${settings_imports}from typing import Any

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class Settings(PluginSettings):
    """``[$stage.$name]`` in loyaltylens.toml, or in the environment:
    LOYALTYLENS_${envstage}_${envname}__<SETTING>."""

$settings

def build(settings: Settings, context: StageContext) -> Any:
    from .component import $cls

    return $cls(settings, context)


@hookimpl
def $hook(register: Register) -> None:
    register("$name", build, settings=Settings,
             description="$summary")
'''

COMPONENT = '''"""The $stage component of ``$name``."""

from __future__ import annotations

$imports
if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from $pkg import Settings

$body'''

TEST = '''"""Runs as generated: ``pip install -e .[test] && pytest``. The loyaltylens_pipeline
fixture makes every other stage a fake, so these tests see only this plugin."""

from __future__ import annotations

${test_imports}import $pkg as plugin

$test'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "LoyaltyLens $stage plugin: $summary."
requires-python = ">=3.11"
dependencies = ["loyaltylens>=$core_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.loyaltylens]
$entry = "$pkg"

[tool.setuptools.packages.find]
where = ["src"]
'''

README = '''# $dist

A LoyaltyLens `$stage` plugin: $summary.

```sh
pip install -e '.[test]'
pytest                                      # runs as generated
loyaltylens plugins                         # lists $stage $name
loyaltylens --use $stage=$name run C001     # or [stages] $stage = "$name" in loyaltylens.toml
```

Settings go in `loyaltylens.toml` under `[$stage.$name]` or in
`LOYALTYLENS_${envstage}_${envname}__<SETTING>`; an unknown key is an error.
Replace the small implementation in `src/$pkg/component.py` with yours; the contracts it must
honour are in the LoyaltyLens docs (docs/plugins.md).
'''


def new_plugin(name: str, stage: str, directory: Path) -> tuple[Path, list[Path]]:
    """Write the package for plugin ``name`` of ``stage`` into ``directory/<dist>``.

    Written to a temporary sibling and renamed into place, so a failure leaves nothing
    half-written; an existing target is refused, never overwritten."""
    if stage not in STAGES:
        from loyaltylens_core.kernel.registry import suggest

        raise UsageError(f"unknown stage {stage!r}", f"stages are: {', '.join(STAGES)}{suggest(stage, STAGES)}")
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"plugin name {name!r} is not a lowercase name",
            "use letters, digits and single '-' or '_', starting with a letter, e.g. acme-store",
        )
    from loyaltylens_core import __version__

    snake = name.replace("-", "_")
    values = {
        "name": name, "stage": stage, "hook": STAGE_BY_NAME[stage].hook, "summary": STAGE_BY_NAME[stage].summary,
        "pkg": f"loyaltylens_{snake}", "dist": f"loyaltylens-{name.replace('_', '-')}", "entry": snake,
        "cls": "".join(part.title() for part in re.split(r"[-_]", name)) + STAGE_BY_NAME[stage].protocol,
        "envstage": stage.upper(), "envname": snake.upper(), "core_version": __version__,
    }
    parts = COMPONENTS[stage]

    def fill(text: str) -> str:
        return string.Template(text).substitute(values)

    files = {
        "pyproject.toml": fill(PYPROJECT),
        "README.md": fill(README),
        f"src/{values['pkg']}/__init__.py": fill(INIT.replace("${settings_imports}", parts.get("settings_imports", ""))
                                                  .replace("$settings", parts["settings"])),
        f"src/{values['pkg']}/component.py": fill(COMPONENT.replace("$imports", parts["imports"])
                                                   .replace("$body", parts["body"])),
        f"tests/test_{snake}.py": fill(TEST.replace("${test_imports}", _block(parts["test_imports"]))
                                       .replace("$test", parts["test"])),
    }
    target = directory / values["dist"]
    if target.exists():
        raise UsageError(f"{target} already exists", "choose another --dir or name, or remove it")
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{values['dist']}-", dir=directory))
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target, [target / relative for relative in files]


def _block(imports: str) -> str:
    """An import block followed by one blank line, or nothing."""
    return imports.rstrip("\n") + "\n\n" if imports.strip() else ""

