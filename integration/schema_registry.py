"""A small Confluent-compatible schema registry, written for the tests.

This is the last resort the README names: no real registry server can be had
on these machines (Confluent's is not in any registry we reach; Apicurio's
Maven artifacts need POMs Maven Central does not serve and a repository we
cannot reach, see the README's testing section). It speaks the part of the
Confluent REST API that Confluent's own serializers and weir use: register
under a subject (an identical schema keeps its ID), fetch by ID, latest by
subject. It checks no compatibility (a real one would refuse the
incompatible schema the tests register, unless the subject's compatibility
is NONE, which is what the tests then model). Optional basic auth.

It can be stopped and started again on the same port with the same
schemas, which is how the tests take the registry away mid-stream."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Registry:
    def __init__(self, port: int, auth: tuple[str, str] | None = None):
        self.port = port
        self.auth = auth
        self.schemas: list[dict] = []  # index + 1 is the ID
        self.subjects: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.fetches: list[int] = []  # IDs fetched, in order
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authorized(self) -> bool:
                if registry.auth is None:
                    return True
                want = base64.b64encode(":".join(registry.auth).encode()).decode()
                if self.headers.get("Authorization") == f"Basic {want}":
                    return True
                self.answer(401, {"error_code": 401, "message": "Unauthorized"})
                return False

            def do_GET(self):
                if not self.authorized():
                    return
                path = self.path.split("?")[0].rstrip("/").split("/")[1:]
                status, body = registry.get(path)
                self.answer(status, body)

            def do_POST(self):
                if not self.authorized():
                    return
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.split("?")[0].rstrip("/").split("/")[1:]
                status, body = registry.post(path, request)
                self.answer(status, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def get(self, path: list[str]) -> tuple[int, dict]:
        with self.lock:
            if len(path) == 3 and path[:2] == ["schemas", "ids"] and path[2].isdigit():
                id = int(path[2])
                self.fetches.append(id)
                if not 1 <= id <= len(self.schemas):
                    return 404, {"error_code": 40403, "message": "Schema not found"}
                return 200, self.schemas[id - 1]
            if len(path) == 4 and path[0] == "subjects" and path[2] == "versions":
                versions = self.subjects.get(path[1])
                if not versions:
                    return 404, {"error_code": 40401, "message": "Subject not found"}
                version = len(versions) if path[3] == "latest" else int(path[3])
                id = versions[version - 1]
                return 200, {"subject": path[1], "version": version, "id": id,
                             **self.schemas[id - 1]}
            if path == ["subjects"]:
                return 200, sorted(self.subjects)
        return 404, {"error_code": 404, "message": "not found"}

    def post(self, path: list[str], request: dict) -> tuple[int, dict]:
        with self.lock:
            if len(path) == 3 and path[0] == "subjects" and path[2] == "versions":
                entry = {"schema": request["schema"]}
                if request.get("schemaType", "AVRO") != "AVRO":
                    entry["schemaType"] = request["schemaType"]
                if entry in self.schemas:
                    id = self.schemas.index(entry) + 1
                else:
                    self.schemas.append(entry)
                    id = len(self.schemas)
                versions = self.subjects.setdefault(path[1], [])
                if id not in versions:
                    versions.append(id)
                return 200, {"id": id}
            if len(path) == 2 and path[0] == "subjects":
                # Lookup: is this schema registered under the subject?
                entry = {"schema": request["schema"]}
                versions = self.subjects.get(path[1], [])
                for version, id in enumerate(versions, 1):
                    if self.schemas[id - 1] == entry:
                        return 200, {"subject": path[1], "version": version, "id": id,
                                     **entry}
                return 404, {"error_code": 40403, "message": "Schema not found"}
        return 404, {"error_code": 404, "message": "not found"}
