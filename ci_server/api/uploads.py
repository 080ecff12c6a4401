"""Content routes for uploads that send only what changed (ci_server/contents.py).

`POST /uploads/missing`: which of these hashes do I still have to send? `POST
/uploads/blobs`: a batch of contents (zstd records, ci_common/trees.py), each checked
against its hash. Then `POST /jobs` with `tree` (the root's hash) instead of a zip. Every
answer is about the caller's own contents only.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO, cast

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ci_common.trees import BATCH_MEDIA_TYPE
from ci_server.api.auth import CurrentUser, current_user
from ci_server.api.jobs import Service, documented
from ci_server.api.schemas import MissingIn, MissingOut, ReceivedOut
from ci_server.models import InvalidUpload, StorageFailure

router = APIRouter(
    prefix="/uploads",
    tags=["uploads"],
    dependencies=[Depends(current_user)],
    responses=documented(401),
)

SPOOL_BYTES = 8 * 1024**2


@router.post("/missing", response_model=MissingOut, responses=documented(400))
async def missing_contents(query: MissingIn, service: Service, user: CurrentUser) -> MissingOut:
    """Those of the `hashes` you have not uploaded yet. Another user's uploads never count:
    whoever has the same file sends it too."""
    return MissingOut(missing=await service.missing_contents(user, query.hashes))


@router.post(
    "/blobs",
    status_code=201,
    response_model=ReceivedOut,
    responses=documented(400, 413, 507),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "a zstd stream of records: `<sha256 hex> <size>\\n` then the bytes",
            "content": {BATCH_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_contents(request: Request, service: Service, user: CurrentUser) -> ReceivedOut:
    """Store a batch of contents; a content whose bytes do not hash to the hash it is sent
    under is refused (400), and so is the rest of its batch."""
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES, dir=str(service.incoming_dir)) as body:
        try:
            async for piece in request.stream():
                await run_in_threadpool(body.write, piece)
        except OSError as e:
            raise StorageFailure(f"the server could not store the upload: {e.strerror}") from e
        if body.tell() == 0:
            raise InvalidUpload("an empty batch")
        body.seek(0)
        received = await service.receive_contents(user, cast("BinaryIO", body))
    return ReceivedOut(received=received.blobs, bytes=received.bytes)
