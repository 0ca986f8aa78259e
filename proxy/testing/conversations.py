"""The fake's Conversations API: ``/conversations`` and its items (protocol-responses.md §1, §7).

A conversation is ``{id: conv_..., object: conversation, created_at, metadata}``; its items are
listed newest first. A Response created with ``conversation`` gets the conversation's items
prepended, and its input and output items are appended once it completes (§7 way 3) -- the
Responses engine calls :meth:`Conversations.items_of` and :meth:`Conversations.append` for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.testing.engine import ApiError
from proxy.testing.plumbing import json_body, page
from proxy.testing.responses_objects import HEX, hex_id, normalise_input
from proxy.testing.streams import Ids, Json

if TYPE_CHECKING:
    from proxy.testing.fake_upstream import FakeUpstream

MAX_ITEMS_PER_CALL = 20


@dataclass
class ConversationRecord:
    conversation: Json
    items: dict[str, Json] = field(default_factory=dict)


class Conversations:
    """Conversation state, shared with the Responses engine."""

    def __init__(self, ids: Ids, clock: Callable[[], int]) -> None:
        self.ids, self.clock = ids, clock
        self.records: dict[str, ConversationRecord] = {}

    def create(self, metadata: Json | None, items: Any) -> ConversationRecord:
        tail = self.ids.chars(16, HEX)
        conv = {"id": hex_id(self.ids, "conv", tail), "object": "conversation", "created_at": self.clock(),
                "metadata": metadata or {}}
        rec = ConversationRecord(conv)
        self._add(rec, items, tail)  # validate before the conversation exists
        self.records[conv["id"]] = rec
        return rec

    def get(self, conversation_id: str) -> ConversationRecord:
        rec = self.records.get(conversation_id)
        if rec is None:
            raise ApiError(404, f"Conversation with id '{conversation_id}' not found.")
        return rec

    def items_of(self, conversation_id: str) -> list[Json]:
        return list(self.get(conversation_id).items.values())

    def append(self, conversation_id: str, items: list[Json]) -> None:
        rec = self.records.get(conversation_id)
        if rec is not None:  # deleted meanwhile: the response still completes
            rec.items.update((i["id"], i) for i in items if "id" in i)

    def add_items(self, rec: ConversationRecord, items: Any) -> list[Json]:
        return self._add(rec, items, self.ids.chars(16, HEX))

    def _add(self, rec: ConversationRecord, items: Any, tail: str) -> list[Json]:
        if items is None:
            return []
        if isinstance(items, list) and len(items) > MAX_ITEMS_PER_CALL:
            raise ApiError(400, f"Invalid 'items': array too long. Expected an array with maximum length "
                                f"{MAX_ITEMS_PER_CALL}, but got an array with length {len(items)} instead.",
                           param="items", code="array_above_max_length")
        if not isinstance(items, list):
            raise ApiError(400, "Invalid type for 'items': expected an array.", param="items", code="invalid_type")
        added = normalise_input(self.ids, tail, items, param="items")
        for item in added:
            item.setdefault("id", hex_id(self.ids, "item", tail))
            rec.items[item["id"]] = item
        return added


class ConversationsApi:
    """The HTTP handlers; registered by the Responses API under each of its prefixes."""

    def __init__(self, fake: FakeUpstream, conversations: Conversations) -> None:
        self.fake, self.state = fake, conversations

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        c, item = prefix + "/conversations/{conversation_id}", prefix + "/conversations/{conversation_id}/items"
        router.add_post(prefix + "/conversations", self._create)
        router.add_get(c, self._get)
        router.add_post(c, self._update)
        router.add_delete(c, self._delete)
        router.add_post(item, self._add_items)
        router.add_get(item, self._list_items)
        router.add_get(item + "/{item_id}", self._get_item)
        router.add_delete(item + "/{item_id}", self._delete_item)

    def _rec(self, request: web.Request) -> ConversationRecord:
        return self.state.get(request.match_info["conversation_id"])

    def _item(self, request: web.Request) -> tuple[ConversationRecord, str]:
        rec, item_id = self._rec(request), request.match_info["item_id"]
        if item_id not in rec.items:
            raise ApiError(404, f"Item with id '{item_id}' not found.")
        return rec, item_id

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = json_body(request, {"items", "metadata"})
        rec = self.state.create(body.get("metadata"), body.get("items"))
        return await self.fake._json(request, 200, rec.conversation)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        return await self.fake._json(request, 200, self._rec(request).conversation)

    async def _update(self, request: web.Request) -> web.StreamResponse:
        rec, body = self._rec(request), json_body(request, {"metadata"})
        if "metadata" not in body:
            raise ApiError(400, "Missing required parameter: 'metadata'.", param="metadata",
                           code="missing_required_parameter")
        rec.conversation = {**rec.conversation, "metadata": body["metadata"] or {}}
        return await self.fake._json(request, 200, rec.conversation)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        rec = self._rec(request)
        del self.state.records[rec.conversation["id"]]
        return await self.fake._json(request, 200, {"id": rec.conversation["id"], "object": "conversation.deleted",
                                                     "deleted": True})

    async def _add_items(self, request: web.Request) -> web.StreamResponse:
        rec, body = self._rec(request), json_body(request, {"items"})
        if "items" not in body:
            raise ApiError(400, "Missing required parameter: 'items'.", param="items",
                           code="missing_required_parameter")
        added = self.state.add_items(rec, body["items"])
        return await self.fake._json(request, 200, {
            "object": "list", "data": added, "first_id": added[0]["id"] if added else None,
            "last_id": added[-1]["id"] if added else None, "has_more": False})

    async def _list_items(self, request: web.Request) -> web.StreamResponse:
        return await self.fake._json(request, 200, page(list(self._rec(request).items.values()), request))

    async def _get_item(self, request: web.Request) -> web.StreamResponse:
        rec, item_id = self._item(request)
        return await self.fake._json(request, 200, rec.items[item_id])

    async def _delete_item(self, request: web.Request) -> web.StreamResponse:
        rec, item_id = self._item(request)
        del rec.items[item_id]
        return await self.fake._json(request, 200, rec.conversation)  # the SDK types it Conversation

