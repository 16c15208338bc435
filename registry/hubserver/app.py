"""The Hub's HTTP API as the ``huggingface_hub`` client uses it: routing, auth, and one method per endpoint.

``HubApp.route`` maps a request to a :class:`Route` (its pattern is what the request log records);
``HubApp.run`` authenticates the caller, runs the endpoint and turns every :class:`HubServerError`
into the status and headers the client maps onto its exceptions. Nothing here touches sockets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote

from registry.hubserver.auth import TokenRegistry
from registry.hubserver.commitstream import read_commit_items
from registry.hubserver.errors import (
    INVALID_CREDENTIALS_MESSAGE,
    BadRequest,
    Conflict,
    EntryNotFound,
    Forbidden,
    Gone,
    HubServerError,
    NotFound,
    RepoNotFound,
    Unauthorized,
)
from registry.hubserver.records import (
    Change,
    Commit,
    DeleteFile,
    DeleteFolder,
    FileEntry,
    PutFile,
    RepoKey,
    RepoRecord,
    StoredObject,
    git_blob_sha1,
    lfs_pointer,
    tree_items,
)
from registry.hubserver.storage import DEFAULT_BRANCH, HubStorage
from registry.hubserver.validation import (
    API_PLURALS,
    URL_PREFIXES,
    is_commit_sha,
    validate_repo_path,
    validate_sha256,
)
from registry.hubserver.wire import FileBody, Request, Response, parse_range

LfsMode = Literal["regular", "auto"]
LFS_MODES: tuple[str, ...] = ("regular", "auto")

# lfs_mode="auto" sends these to git-LFS, like the Hub's default .gitattributes and its 10 MB rule.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz", ".gguf",
     ".parquet", ".arrow", ".zip", ".gz", ".tar", ".7z"}
)
UPLOAD_URL_LIFETIME_S = 3600
AUTH_REQUIRED_MESSAGE = "You must be authenticated to do this: pass a token this server accepts (HF_TOKEN or token=...)"
XET_UNSUPPORTED_MESSAGE = (
    "This Hub server does not implement Xet storage. It answered 'lfs' for some files (lfs_mode='auto'), and a"
    " client with Xet enabled uploads those through Xet. Set HF_HUB_DISABLE_XET=1 in the client, or start the"
    " server with lfs_mode='regular'."
)

Handler = Callable[[Request, str | None], Response]


@dataclass(frozen=True)
class Route:
    """A matched endpoint: ``pattern`` (e.g. ``/api/{type}/{repo}/preupload/{rev}``) and the bound handler."""

    pattern: str
    handler: Handler


class HubApp:
    """The endpoints, over a :class:`HubStorage` and a :class:`TokenRegistry`."""

    def __init__(self, storage: HubStorage, tokens: TokenRegistry, *, lfs_mode: LfsMode = "regular") -> None:
        if lfs_mode not in LFS_MODES:
            raise ValueError(f"lfs_mode must be one of {LFS_MODES}, not {lfs_mode!r}")
        self.storage = storage
        self.tokens = tokens
        self.lfs_mode: LfsMode = lfs_mode
        # Signs the LFS upload URLs (the client sends no token with the PUT). New per process:
        # a restart invalidates outstanding URLs, and the client simply asks the batch API again.
        self._upload_secret = secrets.token_bytes(32)

    # ------------------------------------------------------------------ dispatch

    def route(self, request: Request) -> Route:
        """Match ``request`` to an endpoint; unknown routes get a handler that answers 404."""
        raw = request.raw_path.split("/")[1:]
        seg = [unquote(part) for part in raw]
        method = request.method
        n = len(seg)

        if n >= 2 and seg[0] == "api":
            fixed = {
                ("GET", "agent-harnesses"): ("/api/agent-harnesses", self._agent_harnesses),
                ("GET", "whoami-v2"): ("/api/whoami-v2", self._whoami),
                ("POST", "validate-yaml"): ("/api/validate-yaml", self._validate_yaml),
            }
            if n == 2 and (method, seg[1]) in fixed:
                pattern, handler = fixed[(method, seg[1])]
                return Route(pattern, handler)
            if n == 3 and seg[1] == "repos" and (method, seg[2]) in (("POST", "create"), ("DELETE", "delete")):
                if seg[2] == "create":
                    return Route("/api/repos/create", self._create_repo)
                return Route("/api/repos/delete", self._delete_repo)
            if n >= 4 and seg[1] in API_PLURALS:
                return self._route_api_repo(method, API_PLURALS[seg[1]], seg[2], seg[3], seg[4:])

        if n == 2 and seg[0] == "lfs-upload" and method == "PUT":
            return Route("/lfs-upload/{oid}", partial(self._lfs_upload, oid=seg[1]))

        repo_type = "model"
        rest = seg
        if n >= 1 and seg[0] in ("datasets", "spaces"):
            repo_type = API_PLURALS[seg[0]]
            rest = seg[1:]
        if (len(rest) == 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]
                and method == "POST" and rest[5] in ("batch", "verify")):
            key = partial(self._key, repo_type, rest[0], rest[1][: -len(".git")])
            pattern = f"/{{repo}}.git/info/lfs/objects/{rest[5]}"
            if rest[5] == "batch":
                return Route(pattern, partial(self._lfs_batch, key=key))
            return Route(pattern, partial(self._lfs_verify, key=key))
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            key = partial(self._key, repo_type, rest[0], rest[1])
            return Route(
                "/{repo}/resolve/{rev}/{path}",
                partial(self._resolve, key=key, revision=rest[3], path="/".join(rest[4:])),
            )
        return Route("?", self._unknown)

    def _route_api_repo(self, method: str, repo_type: str, namespace: str, name: str, tail: list[str]) -> Route:
        key = partial(self._key, repo_type, namespace, name)
        base = "/api/{type}/{repo}"
        if not tail and method == "GET":
            return Route(base, partial(self._repo_info, key=key, revision=None))
        if len(tail) == 2 and tail[0] == "revision" and method == "GET":
            return Route(f"{base}/revision/{{rev}}", partial(self._repo_info, key=key, revision=tail[1]))
        if len(tail) >= 2 and tail[0] == "tree" and method == "GET":
            folder = "/".join(tail[2:])
            pattern = f"{base}/tree/{{rev}}" + ("/{path}" if folder else "")
            return Route(pattern, partial(self._tree, key=key, revision=tail[1], folder=folder))
        if tail == ["refs"] and method == "GET":
            return Route(f"{base}/refs", partial(self._refs, key=key))
        if len(tail) == 2 and tail[0] == "preupload" and method == "POST":
            return Route(f"{base}/preupload/{{rev}}", partial(self._preupload, key=key, revision=tail[1]))
        if len(tail) == 2 and tail[0] == "commit" and method == "POST":
            return Route(f"{base}/commit/{{rev}}", partial(self._commit, key=key, branch=tail[1]))
        if len(tail) == 2 and tail[0] == "tag" and method == "POST":
            return Route(f"{base}/tag/{{rev}}", partial(self._create_tag, key=key, revision=tail[1]))
        if len(tail) == 2 and tail[0] == "tag" and method == "DELETE":
            return Route(f"{base}/tag/{{tag}}", partial(self._delete_tag, key=key, tag=tail[1]))
        if tail and tail[0] in ("xet-write-token", "xet-read-token"):
            return Route(f"{base}/{tail[0]}/{{rev}}", self._xet_token)
        return Route("?", self._unknown)

    def run(self, route: Route, request: Request) -> Response:
        """Authenticate, run the endpoint, and turn server errors into Hub-style error responses."""
        try:
            caller = self._caller(request)
            return route.handler(request, caller)
        except HubServerError as error:
            return error_response(error)

    # ------------------------------------------------------------------ auth and lookups

    def _caller(self, request: Request) -> str | None:
        """The caller's user name, None when anonymous; a bad token is refused on every route."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        user = self.tokens.user_for(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            raise Unauthorized(INVALID_CREDENTIALS_MESSAGE)
        return user

    @staticmethod
    def _writer(caller: str | None) -> str:
        if caller is None:
            raise Unauthorized(AUTH_REQUIRED_MESSAGE)
        return caller

    @staticmethod
    def _key(repo_type: str, namespace: str, name: str) -> RepoKey:
        try:
            return RepoKey(repo_type, f"{namespace}/{name}")
        except BadRequest:
            # A name the server could never have created: answer like the Hub does for any unknown repo.
            raise RepoNotFound(f"Repository not found: {repo_type} {namespace}/{name}") from None

    def _visible(self, key: RepoKey, caller: str | None) -> RepoRecord:
        record = self.storage.get_repo(key)
        if record.private and caller is None:
            raise RepoNotFound(f"Repository not found: {key.repo_type} {key.repo_id}")
        return record

    def _revision(self, key: RepoKey, revision: str | None) -> Commit:
        return self.storage.resolve(key, revision or DEFAULT_BRANCH)

    # ------------------------------------------------------------------ small endpoints

    def _unknown(self, request: Request, caller: str | None) -> Response:
        raise NotFound(f"This Hub server has no endpoint {request.method} {request.raw_path}")

    def _agent_harnesses(self, request: Request, caller: str | None) -> Response:
        return Response.json({"standardEnvVars": [], "harnesses": {}})

    def _whoami(self, request: Request, caller: str | None) -> Response:
        user = self._writer(caller)
        return Response.json(
            {
                "type": "user",
                "id": user,
                "name": user,
                "fullname": user,
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "spr-hub", "role": "write"}},
            }
        )

    def _validate_yaml(self, request: Request, caller: str | None) -> Response:
        body = request.json_object()
        content = body.get("content")
        if not isinstance(content, str):
            raise BadRequest("'content' must be a string")
        problem = _front_matter_problem(content)
        if problem:
            return Response.json({"errors": [{"message": problem}], "warnings": []}, status=400)
        return Response.json({"errors": [], "warnings": []})

    def _xet_token(self, request: Request, caller: str | None) -> Response:
        raise BadRequest(XET_UNSUPPORTED_MESSAGE)

    # ------------------------------------------------------------------ repos

    def _create_repo(self, request: Request, caller: str | None) -> Response:
        user = self._writer(caller)
        body = request.json_object()
        name = body.get("name")
        organization = body.get("organization") or user
        repo_type = body.get("type") or "model"
        if not isinstance(name, str) or not isinstance(organization, str) or not isinstance(repo_type, str):
            raise BadRequest("'name', 'organization' and 'type' must be strings")
        key = RepoKey(repo_type, f"{organization}/{name}")
        private_field, visibility = body.get("private"), body.get("visibility")
        if private_field is not None and not isinstance(private_field, bool):
            raise BadRequest(f"'private' must be true or false, not {json.dumps(private_field)[:40]}")
        if visibility is not None and visibility not in ("public", "private"):
            raise BadRequest("'visibility' must be 'public' or 'private'")
        private = visibility == "private" or private_field is True
        url = repo_url(request.base_url, key)
        try:
            self.storage.create_repo(key, private=private, author=user)
        except Conflict as exc:
            # create_repo(exist_ok=True) reads the url from the 409's body.
            raise Conflict(exc.message, extra={"url": url}) from None
        return Response.json({"url": url, "name": key.repo_id, "id": key.repo_id})

    def _delete_repo(self, request: Request, caller: str | None) -> Response:
        self._writer(caller)
        body = request.json_object()
        key = self._key(str(body.get("type") or "model"), str(body.get("organization")), str(body.get("name")))
        self.storage.delete_repo(key)
        return Response.json({})

    def _repo_info(
        self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], revision: str | None
    ) -> Response:
        repo = key()
        record = self._visible(repo, caller)
        commit = self._revision(repo, revision)
        blobs = request.flag("blobs")
        siblings = []
        for path, entry in sorted(commit.tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update({"size": entry.size, "blobId": entry.oid})
                if entry.lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        return Response.json(
            {
                "_id": hashlib.sha1(f"{repo.repo_type}:{repo.repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": namespace,
                "sha": commit.id,
                "private": record.private,
                "gated": False,
                "disabled": False,
                "lastModified": commit.time,
                "createdAt": record.created_at,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(
        self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], revision: str, folder: str
    ) -> Response:
        repo = key()
        self._visible(repo, caller)
        commit = self._revision(repo, revision)
        if folder:
            folder = validate_repo_path(folder, folder=True)
        items = []
        for item in tree_items(commit, folder, recursive=request.flag("recursive")):
            if item.entry is None:
                items.append({"type": "directory", "oid": item.oid, "size": 0, "path": item.path})
            else:
                items.append(_tree_file(item.path, item.entry))
        return Response.json(items)

    def _refs(self, request: Request, caller: str | None, *, key: Callable[[], RepoKey]) -> Response:
        repo = key()
        self._visible(repo, caller)
        branches, tags = self.storage.refs(repo)
        data: dict[str, Any] = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in sorted(branches.items())],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(tags.items())],
        }
        if request.flag("include_prs"):
            data["pullRequests"] = []
        return Response.json(data)

    def _create_tag(
        self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], revision: str
    ) -> Response:
        self._writer(caller)
        repo = key()
        self._visible(repo, caller)
        body = request.json_object()
        tag = body.get("tag")
        sha = self.storage.create_tag(repo, tag, revision)  # type: ignore[arg-type]  # validated there
        return Response.json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": sha})

    def _delete_tag(self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], tag: str) -> Response:
        self._writer(caller)
        repo = key()
        self._visible(repo, caller)
        self.storage.delete_tag(repo, tag)
        return Response.json({})

    # ------------------------------------------------------------------ uploads

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        """``regular`` or ``lfs`` for one file, as ``preupload`` answers it under the server's ``lfs_mode``."""
        if self.lfs_mode == "regular" or size == 0:
            return "regular"
        if size > LFS_SIZE_THRESHOLD or PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or b"\x00" in sample:
            return "lfs"
        return "regular"

    def _preupload(
        self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], revision: str
    ) -> Response:
        self._writer(caller)
        repo = key()
        self._visible(repo, caller)
        _refuse_pull_requests(request)
        commit = self._revision(repo, revision)
        body = request.json_object()
        files = body.get("files")
        if not isinstance(files, list):
            raise BadRequest("'files' must be a list")
        answers = []
        for item in files:
            if not isinstance(item, dict):
                raise BadRequest("each entry of 'files' must be an object")
            path = validate_repo_path(item.get("path"))
            size = item.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"'size' of {path!r} must be a non-negative integer")
            try:
                sample = base64.b64decode(str(item.get("sample") or ""), validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"'sample' of {path!r} is not base64") from None
            mode = self.upload_mode(path, size, sample)
            answers.append(
                {"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": self._remote_oid(commit, path, mode)}
            )
        return Response.json({"files": answers, "commitOid": commit.id})

    def _remote_oid(self, commit: Commit, path: str, mode: str) -> str | None:
        # The client skips a file whose local id equals this one; its local id is the sha256 for
        # an "lfs" answer and the git blob sha1 for a "regular" one, whatever the stored file was.
        entry = commit.tree.get(path)
        if entry is None:
            return None
        if mode == "lfs":
            return entry.sha256
        if not entry.lfs:
            return entry.oid
        try:
            return self.storage.content_git_sha1(entry.sha256)
        except FileNotFoundError:
            return None

    def _commit(self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], branch: str) -> Response:
        user = self._writer(caller)
        repo = key()
        self._visible(repo, caller)
        _refuse_pull_requests(request)
        stored: list[StoredObject] = []  # what this request put into (or found in) the object store
        committed = False
        try:
            commit = self._apply_commit(request, repo, branch, user, stored)
            committed = True
        finally:
            # A refused commit removes what it stored: otherwise any token holder could fill the
            # disk with refused commits.
            self.storage.release(stored, discard=not committed)
        return Response.json(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{repo_url(request.base_url, repo)}/commit/{commit.id}",
                "pullRequestUrl": None,
                "hookOutput": "",
            }
        )

    def _apply_commit(self, request: Request, repo: RepoKey, branch: str, user: str, stored: list[StoredObject]) -> Commit:
        header: dict[str, Any] | None = None
        changes: list[Change] = []
        for item in read_commit_items(request.body, self.storage, stored):
            if header is None:
                if item.key != "header":
                    raise BadRequest("the first line of a commit must be its header")
                header = item.value
            elif item.stored is not None:
                changes.append(self._streamed_file(item.value, item.stored))
            else:
                changes.append(self._change(item.key, item.value, stored))
        if header is None:
            raise BadRequest("empty commit payload")
        parent = header.get("parentCommit")
        if parent is not None and (not isinstance(parent, str) or not is_commit_sha(parent)):
            raise BadRequest("'parentCommit' must be a 40-hex commit id")
        summary, description = header.get("summary") or "", header.get("description") or ""
        if not isinstance(summary, str) or not isinstance(description, str):
            raise BadRequest("'summary' and 'description' must be strings")
        return self.storage.commit(
            repo, branch, changes, summary=summary, description=description, author=user, parent_commit=parent
        )

    def _streamed_file(self, value: dict[str, Any], stored: StoredObject) -> Change:
        path = validate_repo_path(value.get("path"))
        if value.get("encoding", "base64") != "base64":
            raise BadRequest(f"file {path!r}: only base64 encoding is supported")
        return PutFile(path, stored, lfs=False, oid=self.storage.content_git_sha1(stored.sha256))

    def _change(self, kind: object, value: dict[str, Any], stored: list[StoredObject]) -> Change:
        if kind == "file":
            path = validate_repo_path(value.get("path"))
            if value.get("encoding", "base64") != "base64":
                raise BadRequest(f"file {path!r}: only base64 encoding is supported")
            try:
                data = base64.b64decode(str(value.get("content", "")), validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"file {path!r}: content is not base64") from None
            obj = self.storage.put_bytes(data)
            stored.append(obj)
            return PutFile(path, obj, lfs=False, oid=git_blob_sha1(data))
        if kind == "lfsFile":
            path = validate_repo_path(value.get("path"))
            if value.get("algo", "sha256") != "sha256":
                raise BadRequest(f"LFS file {path!r}: only sha256 is supported")
            oid = validate_sha256(value.get("oid"))
            uploaded = self.storage.find_object(oid)
            if uploaded is None:
                raise BadRequest(f"LFS file {path!r}: object {oid} has not been uploaded")
            size = value.get("size")
            if size is not None and size != uploaded.size:
                raise BadRequest(f"LFS file {path!r}: object {oid} has {uploaded.size} bytes, not {size}")
            return PutFile(path, uploaded, lfs=True, oid=git_blob_sha1(lfs_pointer(oid, uploaded.size)))
        if kind == "deletedFile":
            return DeleteFile(validate_repo_path(value.get("path")))
        if kind == "deletedFolder":
            return DeleteFolder(validate_repo_path(value.get("path"), folder=True))
        raise BadRequest(f"unsupported commit operation {kind!r}")

    # ------------------------------------------------------------------ git-LFS

    def _lfs_batch(self, request: Request, caller: str | None, *, key: Callable[[], RepoKey]) -> Response:
        self._writer(caller)
        repo = key()
        self._visible(repo, caller)
        body = request.json_object()
        if body.get("operation") != "upload":
            raise BadRequest("this server's LFS batch API only supports the 'upload' operation")
        objects = body.get("objects")
        if not isinstance(objects, list):
            raise BadRequest("'objects' must be a list")
        answers = []
        verify_href = f"{request.base_url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects/verify"
        for item in objects:
            oid = validate_sha256(item.get("oid") if isinstance(item, dict) else None)
            size = item.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"object {oid}: 'size' must be a non-negative integer")
            stored = self.storage.find_object(oid)
            if stored is not None and stored.size == size:
                answers.append({"oid": oid, "size": size})  # no actions: already there
                continue
            answers.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {
                            "href": self._signed_upload_url(request.base_url, oid, size),
                            "expires_in": UPLOAD_URL_LIFETIME_S,
                        },
                        "verify": {"href": verify_href},
                    },
                }
            )
        return Response.json(
            {"transfer": "basic", "objects": answers, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _signed_upload_url(self, base_url: str, oid: str, size: int) -> str:
        expires = int(time.time()) + UPLOAD_URL_LIFETIME_S
        return f"{base_url}/lfs-upload/{oid}?size={size}&expires={expires}&sig={self._signature(oid, size, expires)}"

    def _signature(self, oid: str, size: int, expires: int) -> str:
        return hmac.new(self._upload_secret, f"{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _lfs_upload(self, request: Request, caller: str | None, *, oid: str) -> Response:
        validate_sha256(oid)
        try:
            size = int(request.param("size") or "")
            expires = int(request.param("expires") or "")
        except ValueError:
            raise Forbidden("upload URL is not one this server signed") from None
        signature = request.param("sig") or ""
        if not hmac.compare_digest(signature, self._signature(oid, size, expires)):
            raise Forbidden("upload URL is not one this server signed")
        if expires < time.time():
            raise Forbidden("upload URL has expired; ask the LFS batch API for a new one")
        obj = self.storage.put_stream(request.body, expected_sha256=oid, expected_size=size)
        # Kept for the commit that will reference it; 'spr hub gc' removes it if none ever does.
        self.storage.release([obj], discard=False)
        return Response(200)

    def _lfs_verify(self, request: Request, caller: str | None, *, key: Callable[[], RepoKey]) -> Response:
        self._writer(caller)
        repo = key()
        self._visible(repo, caller)
        body = request.json_object()
        oid = validate_sha256(body.get("oid"))
        stored = self.storage.find_object(oid)
        if stored is None or stored.size != body.get("size"):
            raise NotFound(f"object {oid} of {body.get('size')} bytes has not been uploaded")
        return Response.json({"oid": oid, "size": stored.size})

    # ------------------------------------------------------------------ downloads

    def _resolve(
        self, request: Request, caller: str | None, *, key: Callable[[], RepoKey], revision: str, path: str
    ) -> Response:
        repo = key()
        self._visible(repo, caller)
        commit = self._revision(repo, revision)
        path = validate_repo_path(path)
        entry = commit.tree.get(path)
        if entry is None:
            raise EntryNotFound(f"Entry not found: {path} at {commit.id}", commit=commit.id)
        headers = [
            ("X-Repo-Commit", commit.id),
            ("ETag", f'"{entry.oid}"'),
            ("Accept-Ranges", "bytes"),
            ("Content-Type", "application/octet-stream"),
        ]
        if entry.lfs:
            headers += [("X-Linked-Etag", f'"{entry.sha256}"'), ("X-Linked-Size", str(entry.size))]
        object_path = self.storage.object_path(entry.sha256)
        try:
            on_disk = object_path.stat().st_size
        except FileNotFoundError:
            raise Gone(f"the stored bytes of {path} ({entry.sha256}) are missing on this server") from None
        if request.method == "HEAD":
            # The recorded size, as the Hub's metadata states it: a damaged object is then caught by the
            # client's own size check on download.
            return Response(200, [*headers, ("Content-Length", str(entry.size))])
        byte_range = parse_range(request.headers.get("range"), on_disk)
        if byte_range is None:
            return Response(200, headers, FileBody(object_path, 0, on_disk))
        if byte_range == "unsatisfiable":
            error = error_response(HubServerError(f"Requested range not satisfiable (file has {on_disk} bytes)"))
            error.status = 416
            error.headers.append(("Content-Range", f"bytes */{on_disk}"))
            return error
        start, end = byte_range
        headers.append(("Content-Range", f"bytes {start}-{end}/{on_disk}"))
        return Response(206, headers, FileBody(object_path, start, end - start + 1))


def repo_url(base_url: str, key: RepoKey) -> str:
    """The repo's web URL, ``{endpoint}/{prefix}{ns}/{name}``."""
    return f"{base_url}/{URL_PREFIXES[key.repo_type]}{key.repo_id}"


def error_response(error: HubServerError) -> Response:
    """The status, ``X-Error-Code``/``X-Error-Message`` headers and JSON body the client parses."""
    headers = [("X-Error-Message", _header_safe(error.message))]
    if error.error_code:
        headers.append(("X-Error-Code", error.error_code))
    commit = getattr(error, "commit", None)
    if commit:
        headers.append(("X-Repo-Commit", commit))
    body: dict[str, Any] = {"error": error.message}
    body.update(getattr(error, "extra", {}))
    return Response.json(body, status=error.status, headers=headers)


def _tree_file(path: str, entry: FileEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return item


def _refuse_pull_requests(request: Request) -> None:
    if request.flag("create_pr"):
        raise BadRequest("this Hub server does not support pull requests (create_pr)")


def _front_matter_problem(content: str) -> str | None:
    """Why a README's YAML front matter is invalid, or None (no front matter is fine)."""
    lines = content.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        return "the YAML front matter is not closed by a '---' line"
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with huggingface_hub
        return None
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        return f"invalid YAML in the front matter: {exc}"
    if data is not None and not isinstance(data, dict):
        return "the YAML front matter must be a mapping"
    return None


def _header_safe(message: str) -> str:
    # Header values are latin-1 on the wire and one line: escape the rest (the JSON body keeps it all).
    flat = " ".join(message.split())
    return flat.encode("ascii", "backslashreplace").decode("ascii")


__all__ = ["LFS_MODES", "HubApp", "LfsMode", "Route", "error_response", "parse_range", "repo_url"]
