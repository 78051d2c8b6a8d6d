"""A local HTTP server implementing the Kubeflow Pipelines v2beta1 REST calls that ``memaudit submit`` uses.

It keeps pipelines, versions, experiments and runs in memory, parses uploads like the real API (multipart
``uploadfile``; the package must be a KFP IR YAML) and records every request for the tests to inspect.
"""

import json
import threading
import uuid
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml


class FakeKfpApi:
    def __init__(self):
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: set[str | None] = set()  # Authorization headers seen
        self.packages: dict[str, dict] = {}  # version id -> parsed pipeline spec
        self.refuse_with: int | None = None  # answer every request with this HTTP status (e.g. 403)
        self.refusal_message = "refused"  # the message a refusal carries, as KFP's API puts it
        self.tag_name = "2.17.0"  # the backend version healthz reports
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def refusal(self) -> dict:
        return {"error": self.refusal_message, "message": self.refusal_message, "code": 7}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------------ handlers
    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                api.requests.append(("GET", self.path))
                api.authorizations.add(self.headers.get("Authorization"))
                if api.refuse_with:
                    return self._reply(api.refuse_with, api.refusal())
                url = urlparse(self.path)
                query = parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if url.path == "/apis/v2beta1/pipelines":
                    name = _filter_value(query)
                    found = [p for p in api.pipelines.values() if name is None or p["display_name"] == name]
                    return self._reply(200, {"pipelines": found, "total_size": len(found)} if found else {})
                if parts[:3] == ["apis", "v2beta1", "pipelines"] and parts[-1] == "versions":
                    versions = api.versions.get(parts[3], [])
                    return self._reply(200, {"pipeline_versions": versions, "total_size": len(versions)})
                if url.path == "/apis/v2beta1/experiments":
                    name = _filter_value(query)
                    found = [e for e in api.experiments.values() if name is None or e["display_name"] == name]
                    return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
                if parts[:3] == ["apis", "v2beta1", "runs"] and len(parts) == 4 and parts[3] in api.runs:
                    return self._reply(200, api.runs[parts[3]])
                if url.path == "/apis/v2beta1/healthz":
                    return self._reply(200, {"multi_user": False, "tag_name": api.tag_name, "commit_sha": "0" * 40})
                return self._reply(404, {"error": f"no route {url.path}", "code": 5})

            def do_POST(self):
                api.requests.append(("POST", self.path))
                api.authorizations.add(self.headers.get("Authorization"))
                if api.refuse_with:
                    return self._reply(api.refuse_with, api.refusal())
                url = urlparse(self.path)
                query = parse_qs(url.query)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if url.path in ("/apis/v2beta1/pipelines/upload", "/apis/v2beta1/pipelines/upload_version"):
                    spec = self._package(body)
                    if spec is None:
                        return self._reply(400, {"error": "uploadfile is not a pipeline spec", "code": 3})
                    name = query.get("name", [""])[0]
                    if url.path.endswith("/upload"):
                        pid = str(uuid.uuid4())
                        api.pipelines[pid] = {"pipeline_id": pid, "display_name": name}
                        api.versions[pid] = []
                        api._add_version(pid, name, spec)
                        return self._reply(200, api.pipelines[pid])
                    pid = query.get("pipelineid", [""])[0]
                    if pid not in api.pipelines:
                        return self._reply(404, {"error": "no such pipeline", "code": 5})
                    return self._reply(200, api._add_version(pid, name, spec))
                data = json.loads(body or b"{}")
                if url.path == "/apis/v2beta1/experiments":
                    eid = str(uuid.uuid4())
                    api.experiments[eid] = {"experiment_id": eid, **data}
                    return self._reply(200, api.experiments[eid])
                if url.path == "/apis/v2beta1/runs":
                    ref = data.get("pipeline_version_reference") or {}
                    known = [v["pipeline_version_id"] for v in api.versions.get(ref.get("pipeline_id"), [])]
                    if data.get("experiment_id") not in api.experiments or ref.get("pipeline_version_id") not in known:
                        return self._reply(404, {"error": "unknown experiment or pipeline version", "code": 5})
                    spec = api.packages[ref["pipeline_version_id"]]
                    declared = set(spec["root"]["inputDefinitions"]["parameters"])
                    given = set((data.get("runtime_config") or {}).get("parameters") or {})
                    if not given <= declared:
                        return self._reply(400, {"error": f"unknown parameters {sorted(given - declared)}", "code": 3})
                    rid = str(uuid.uuid4())
                    api.runs[rid] = {"run_id": rid, "state": "PENDING", **data}
                    return self._reply(200, api.runs[rid])
                return self._reply(404, {"error": f"no route {url.path}", "code": 5})

            def _package(self, body: bytes):
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = BytesParser(policy=default).parsebytes(head + body)
                files = [
                    part.get_payload(decode=True)
                    for part in (message.iter_parts() if message.is_multipart() else [])
                    if part.get_param("name", header="content-disposition") == "uploadfile"
                ]
                docs = list(yaml.safe_load_all(files[0])) if files else []
                spec = docs[0] if docs else None
                return spec if isinstance(spec, dict) and "root" in spec and "components" in spec else None

        return Handler

    def _add_version(self, pipeline_id: str, name: str, spec: dict) -> dict:
        vid = str(uuid.uuid4())
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": vid, "display_name": name}
        self.versions[pipeline_id].append(version)
        self.packages[vid] = spec
        return version


def _filter_value(query: dict) -> str | None:
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"][0]).get("predicates", [])
    return next(
        (p.get("string_value", p.get("stringValue")) for p in predicates if p.get("key") == "display_name"), None
    )
