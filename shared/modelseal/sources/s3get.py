"""One ranged GetObject for s3.py: on a presigned URL over botocore's own connections, else the SDK call.

Why not always `get_object`: botocore spends about 2 ms of CPU on every call
(event hooks, serializing, signing, parsing the answer into a dict, dateutil
for LastModified), and a 150 GB model is 19,000 ranged GETs of 8 MiB. A
presigned URL (botocore resolves endpoint, region, addressing style and
credentials, and signs) sent on the client's own urllib3 pool (its proxies,
CA bundle, client certificate, timeouts) costs about 0.6 ms, and one URL
serves every part for SIGNED_FOR seconds (Range and If-Match are headers,
outside the signature); s3.fetch_range then checks the answer exactly as it
checks the SDK's (ETag, version, Content-Range). The body is read on the
pump's thread (pump.py). A part read whole hands its connection back to the
pool: an https store is not asked for a TLS handshake per part.

Answers other than a part:
- An error status is parsed by botocore's own parser for GetObject and
  raised as the ClientError get_object would raise, so the retry policy and
  the exit codes see the same thing, attempt for attempt.
- A redirect, 400 or 403 may be about the presigned URL itself (another
  region, a store that does not take query-string authentication): the fast
  path is switched off for this download and the same attempt asks again
  through get_object, whose answer counts. At most one extra request.

The URL is a bearer credential for this object for PRESIGNED_SECONDS: it is
kept only in this object's memory (which holds the credentials that signed
it) for SIGNED_FOR seconds, an exception raised while sending it is rebuilt
without it, and nothing logs it (urllib3 logs paths only at DEBUG, which
modelseal never turns on).
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from .. import aws, pump, retry
from ..errors import IntegrityError

#: As long as botocore lets a header-signed request's clock be off (15 minutes), so a skew the SDK call
#: survives does not fail here.
PRESIGNED_SECONDS = 900
#: A URL is used for this long, then signed again: the Range and If-Match headers are not part of the
#: signature, so one URL serves every part, and a clock skew of up to 14 minutes still finds it valid.
SIGNED_FOR = 60.0
#: Statuses that may be about the presigned URL itself rather than the object: asked again through the SDK.
ASK_THE_SDK = frozenset({400, 403})
#: The most of an error answer read for its code (S3's are a few hundred bytes).
MAX_ERROR_BODY = 64 << 10


class Answer(pump.PartBody):
    """The answer to one ranged GET: the headers the checks need, and its body read straight into a buffer
    (readinto, by the pump) and its connection kept for the next part (finish)."""

    def __init__(self, etag: Any, version: Any, content_range: Any, raw: Any, close: Callable[[], None]) -> None:
        self.etag, self.version, self.content_range = etag, version, content_range
        super().__init__(raw, close)


class RangedGets:
    """Ranged GETs of one S3 object (see the module docstring)."""

    def __init__(self, client: Any, presigner: Any, bucket: str, key: str, what: str) -> None:
        self.client, self.presigner, self.bucket, self.key, self.what = client, presigner, bucket, key, what
        # botocore's own pool for the client (a private attribute: without it, every GET is get_object).
        self._send: Any = getattr(getattr(getattr(client, "_endpoint", None), "http_session", None), "send", None)
        self.presigned = callable(self._send)
        self._signed: dict[str | None, tuple[str, float]] = {}  # version -> (URL, when signed)

    def get(self, first: int, end: int, etag: str | None, version: str | None) -> Answer:
        if self.presigned:
            answer = self._presigned(first, end, etag, version)
            if answer is not None:
                return answer
        return self._sdk(first, end, etag, version)

    def _object(self, version: str | None) -> dict[str, str]:
        return {"Bucket": self.bucket, "Key": self.key, **({"VersionId": version} if version else {})}

    def _url(self, version: str | None) -> str:
        """A presigned GetObject URL, signed again once it is SIGNED_FOR old (signing costs more than sending)."""
        now = time.monotonic()
        signed = self._signed.get(version)
        if signed is None or now - signed[1] >= SIGNED_FOR:
            url = self.presigner.generate_presigned_url("get_object", Params=self._object(version),
                                                        ExpiresIn=PRESIGNED_SECONDS)
            signed = self._signed[version] = (url, now)
        return signed[0]

    def _sdk(self, first: int, end: int, etag: str | None, version: str | None) -> Answer:
        resp = aws.parsed(self.what, self.client.get_object)(**self._object(version), Range=f"bytes={first}-{end}",
                                                             **({"IfMatch": etag} if etag else {}))
        body = resp["Body"]
        return Answer(resp.get("ETag"), resp.get("VersionId"), resp.get("ContentRange"),
                      getattr(body, "_raw_stream", body), body.close)

    def _presigned(self, first: int, end: int, etag: str | None, version: str | None) -> Answer | None:
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError

        url = self._url(version)
        if urlsplit(url).scheme != urlsplit(self.client.meta.endpoint_url).scheme:
            self.presigned = False  # never a scheme other than the endpoint's checked one (no https -> http)
            return None
        headers = {"Range": f"bytes={first}-{end}", "Accept-Encoding": "identity", "User-Agent": "modelseal"}
        if etag:
            headers["If-Match"] = etag
        request = AWSRequest(method="GET", url=url, headers=headers).prepare()
        request.stream_output = True
        failed: BaseException | None = None
        try:
            resp = self._send(request)
        except BotoCoreError as exc:
            failed = _without_url(exc)
        if failed is not None:  # raised outside the except: the original, URL and all, is not its context
            raise failed
        status = resp.status_code
        if 200 <= status < 300:
            h = resp.headers
            return Answer(h.get("ETag"), h.get("x-amz-version-id"), h.get("Content-Range"), resp.raw,
                          resp.raw.close)
        if status in ASK_THE_SDK or 300 <= status < 400:
            resp.raw.close()
            self.presigned = False
            return None
        raise self._error(resp)

    def _error(self, resp: Any) -> Exception:
        """The ClientError get_object raises for this answer, from botocore's own parser."""
        from botocore import parsers

        try:
            body = resp.raw.read(MAX_ERROR_BODY + 1)
        finally:
            resp.raw.close()
        if len(body) > MAX_ERROR_BODY:
            return IntegrityError(f"{self.what}: an error answer (HTTP {resp.status_code}) of more than "
                                  f"{MAX_ERROR_BODY} bytes")
        model = self.client.meta.service_model
        parser = parsers.create_parser(model.metadata["protocol"])
        answer = {"headers": resp.headers, "status_code": resp.status_code, "body": body,
                  "context": {"operation_name": "GetObject"}}
        parsed = aws.parsed(self.what, parser.parse)(response=answer,
                                                     shape=model.operation_model("GetObject").output_shape)
        code = (parsed.get("Error") or {}).get("Code")
        return self.client.exceptions.from_code(code)(parsed, "GetObject")


def _without_query(url: Any) -> Any:
    if not isinstance(url, str):
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _without_url(exc: Any) -> BaseException:
    """The same botocore error (class, wrapped cause) without the presigned URL it names."""
    kwargs = {k: (_without_query(v) if k.endswith("_url") else None if k == "request" else v)
              for k, v in getattr(exc, "kwargs", {}).items()}
    inner: Any = kwargs.get("error")
    if isinstance(getattr(inner, "url", None), str):  # urllib3's timeout errors keep the path they asked for
        inner.url = _without_query(inner.url)
    try:
        return type(exc)(**kwargs)
    except Exception:  # noqa: BLE001 - a class that cannot be rebuilt: its name is all that is kept
        return retry.TransientError(f"GET failed ({type(exc).__name__})")
