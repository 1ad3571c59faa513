"""Real Flowise 3.1.4 databases for the import tests: its own DDL, replayed in its migrations' order.

The statements below are copied from Flowise's migrations (packages/server/src/database/migrations and
src/enterprise/database/migrations, in the order their index.ts runs them), for the three tables the
import reads: `workspace` (as AddWorkspace creates it: the foreign keys need only its id), `apikey` and
`chat_flow`. Keys are made as Flowise makes them (utils/apiKey.ts): 32 random bytes in base64url, and
`apiSecret` the scrypt hash Flowise's middleware verifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

SQLITE_DDL = (
    # Init1693835579790
    """CREATE TABLE IF NOT EXISTS "chat_flow" ("id" varchar PRIMARY KEY NOT NULL, "name" varchar NOT NULL, "flowData" text NOT NULL, "deployed" boolean, "isPublic" boolean, "apikeyid" varchar, "chatbotConfig" varchar, "createdDate" datetime NOT NULL DEFAULT (datetime('now')), "updatedDate" datetime NOT NULL DEFAULT (datetime('now')));""",  # noqa: E501 (verbatim)
    # AddApiKey1720230151480
    """CREATE TABLE IF NOT EXISTS "apikey" ("id" varchar PRIMARY KEY NOT NULL,
                "apiKey" varchar NOT NULL,
                "apiSecret" varchar NOT NULL,
                "keyName" varchar NOT NULL,
                "updatedDate" datetime NOT NULL DEFAULT (datetime('now')));""",
    # AddWorkspace1720230151484
    """CREATE TABLE IF NOT EXISTS "workspace" ("id" varchar PRIMARY KEY NOT NULL,
"name" text NOT NULL,
"description" varchar,
"createdDate" datetime NOT NULL DEFAULT (datetime('now')),
"updatedDate" datetime NOT NULL DEFAULT (datetime('now')));""",
    # LinkWorkspaceId1729130948686: apikey rebuilt with createdDate and workspaceId (no rows to copy here)
    """CREATE TABLE "temp_apikey" (
                "id" varchar PRIMARY KEY NOT NULL,
                "apiKey" varchar NOT NULL,
                "apiSecret" varchar NOT NULL,
                "keyName" varchar NOT NULL,
                "createdDate" datetime NOT NULL DEFAULT (datetime('now')),
                "updatedDate" datetime NOT NULL DEFAULT (datetime('now')),
                "workspaceId" varchar,
                FOREIGN KEY ("workspaceId") REFERENCES "workspace"("id")
            );""",
    """CREATE INDEX IF NOT EXISTS "idx_apikey_workspaceId" ON "temp_apikey"("workspaceId");""",
    """DROP TABLE "apikey";""",
    """ALTER TABLE "temp_apikey" RENAME TO "apikey";""",
    # ModifyChatflowType1755066758601: chat_flow as it is since (it rebuilds the table LinkWorkspaceId rebuilt)
    """CREATE TABLE "temp_chat_flow" (
                "id" varchar PRIMARY KEY NOT NULL,
                "name" varchar NOT NULL,
                "flowData" text NOT NULL,
                "deployed" boolean,
                "isPublic" boolean,
                "apikeyid" varchar,
                "chatbotConfig" text,
                "createdDate" datetime NOT NULL DEFAULT (datetime('now')),
                "updatedDate" datetime NOT NULL DEFAULT (datetime('now')),
                "apiConfig" TEXT,
                "analytic" TEXT,
                "category" TEXT,
                "speechToText" TEXT,
                "type" VARCHAR(20) NOT NULL DEFAULT 'CHATFLOW',
                "workspaceId" TEXT,
                "followUpPrompts" TEXT,
                FOREIGN KEY ("workspaceId") REFERENCES "workspace"("id")
            );""",
    """DROP TABLE "chat_flow";""",
    """ALTER TABLE "temp_chat_flow" RENAME TO "chat_flow";""",
    # AddTextToSpeechToChatFlow1759419136055, AddChatFlowNameIndex1759424923093
    """ALTER TABLE "chat_flow" ADD COLUMN "textToSpeech" TEXT;""",
    """CREATE INDEX IF NOT EXISTS "IDX_chatflow_name" ON "chat_flow" (substr(name, 1, 255))""",
    # AddApiKeyPermission1765360298674
    SQLITE_PERMISSIONS := """ALTER TABLE "apikey" ADD COLUMN "permissions" TEXT NOT NULL DEFAULT '[]';""",
    # AddWebhookSecretToChatFlow1776240000000, AddMcpServerConfigToChatFlow1767000000000
    """ALTER TABLE "chat_flow" ADD COLUMN "webhookSecret" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN "webhookSecretConfigured" BOOLEAN DEFAULT FALSE;""",
    """ALTER TABLE "chat_flow" ADD COLUMN "mcpServerConfig" TEXT;""",
)

POSTGRES_DDL = (
    # pgserver has no uuid-ossp; Flowise's DDL calls uuid_generate_v4()
    """CREATE OR REPLACE FUNCTION uuid_generate_v4() RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()'""",
    # Init1693891895163
    """CREATE TABLE IF NOT EXISTS chat_flow (
                id uuid NOT NULL DEFAULT uuid_generate_v4(),
                "name" varchar NOT NULL,
                "flowData" text NOT NULL,
                deployed bool NULL,
                "isPublic" bool NULL,
                apikeyid varchar NULL,
                "chatbotConfig" varchar NULL,
                "createdDate" timestamp NOT NULL DEFAULT now(),
                "updatedDate" timestamp NOT NULL DEFAULT now(),
                CONSTRAINT "PK_3c7cea7d047ac4b91764574cdbf" PRIMARY KEY (id)
            );""",
    # ModifyChatFlow1693995626941, AddApiConfig1694099183389, AddAnalytic1694432361423,
    # AddCategoryToChatFlow1699900910291, AddSpeechToText1706364937060, AddTypeToChatFlow1716300000000
    """ALTER TABLE "chat_flow" ALTER COLUMN "chatbotConfig" TYPE TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "apiConfig" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "analytic" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "category" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "speechToText" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "type" TEXT;""",
    # AddApiKey1720230151480
    """CREATE TABLE IF NOT EXISTS apikey (
                id uuid NOT NULL DEFAULT uuid_generate_v4(),
                "apiKey" varchar NOT NULL,
                "apiSecret" varchar NOT NULL,
                "keyName" varchar NOT NULL,
                "updatedDate" timestamp NOT NULL DEFAULT now(),
                CONSTRAINT "PK_96109043dd704f53-9830ab78f0" PRIMARY KEY (id)
            );""",
    # AddWorkspace1720230151484
    """CREATE TABLE IF NOT EXISTS workspace (
                id uuid NOT NULL DEFAULT uuid_generate_v4(),
                "name" varchar NOT NULL,
                "description" varchar NULL,
                "createdDate" timestamp NOT NULL DEFAULT now(),
                "updatedDate" timestamp NOT NULL DEFAULT now(),
                CONSTRAINT "PK_98719043dd804f55-9830ab99f8" PRIMARY KEY (id)
            );""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "workspaceId" varchar;""",
    """ALTER TABLE "apikey" ADD COLUMN IF NOT EXISTS "workspaceId" varchar;""",
    # AddFollowUpPrompts1726666309552
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "followUpPrompts" TEXT;""",
    # LinkWorkspaceId1729130948686
    """ALTER TABLE "apikey" ALTER COLUMN "workspaceId" SET DATA TYPE UUID USING "workspaceId"::UUID;""",
    """ALTER TABLE "apikey" ADD CONSTRAINT "fk_apikey_workspaceId" FOREIGN KEY ("workspaceId") REFERENCES "workspace"("id");""",  # noqa: E501 (verbatim)
    """CREATE INDEX "idx_apikey_workspaceId" ON "apikey"("workspaceId");""",
    """ALTER TABLE "chat_flow" ALTER COLUMN "workspaceId" SET DATA TYPE UUID USING "workspaceId"::UUID;""",
    """ALTER TABLE "chat_flow" ADD CONSTRAINT "fk_chat_flow_workspaceId" FOREIGN KEY ("workspaceId") REFERENCES "workspace"("id");""",  # noqa: E501 (verbatim)
    """CREATE INDEX "idx_chat_flow_workspaceId" ON "chat_flow"("workspaceId");""",
    # ModifyChatflowType1755066758601
    """ALTER TABLE "chat_flow" ALTER COLUMN "type" SET DEFAULT 'CHATFLOW';""",
    """ALTER TABLE "chat_flow" ALTER COLUMN "type" TYPE VARCHAR(20);""",
    """ALTER TABLE "chat_flow" ALTER COLUMN "type" SET NOT NULL;""",
    # AddTextToSpeechToChatFlow1754986480347, AddChatFlowNameIndex1759424903973
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "textToSpeech" TEXT;""",
    """CREATE INDEX IF NOT EXISTS "IDX_chatflow_name" ON "chat_flow" (substring("name" from 1 for 255))""",
    # AddApiKeyPermission1765360298674
    """ALTER TABLE "apikey" ADD COLUMN "permissions" JSONB NOT NULL DEFAULT '[]'::jsonb;""",
    # AddMcpServerConfigToChatFlow1767000000000, AddWebhookSecretToChatFlow1776240000001
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "mcpServerConfig" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "webhookSecret" TEXT;""",
    """ALTER TABLE "chat_flow" ADD COLUMN IF NOT EXISTS "webhookSecretConfigured" BOOLEAN DEFAULT FALSE;""",
)


def flowise_key() -> str:
    """A key as Flowise's generateAPIKey makes it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def flowise_secret(api_key: str) -> str:
    """Flowise's generateSecretHash: `<scrypt(key, salt) hex>.<salt>`, the salt 8 random bytes in hex."""
    salt = secrets.token_hex(8)
    return f"{hashlib.scrypt(api_key.encode(), salt=salt.encode(), n=16384, r=8, p=1, dklen=64).hex()}.{salt}"


@dataclass
class Key:
    name: str
    workspace: str | None
    permissions: list[str]
    api_key: str = field(default_factory=flowise_key, repr=False)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    api_secret: str = ""  # default: the right one

    def secret(self) -> str:
        return self.api_secret or flowise_secret(self.api_key)


@dataclass
class Flow:
    workspace: str | None
    apikey_id: str | None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = "flow"


def _key_rows(keys: Sequence[Key]) -> list[tuple[object, ...]]:
    return [(k.id, k.api_key, k.secret(), k.name, json.dumps(k.permissions), k.workspace) for k in keys]


def _flow_rows(flows: Sequence[Flow]) -> list[tuple[object, ...]]:
    return [(f.id, f.name, "{}", f.apikey_id, f.workspace) for f in flows]


def _workspaces(keys: Sequence[Key], flows: Sequence[Flow]) -> list[str]:
    return sorted({w for w in [*(k.workspace for k in keys), *(f.workspace for f in flows)] if w})


def sqlite_flowise(path: Path, keys: Sequence[Key], flows: Sequence[Flow], *, flowise_3_0: bool = False) -> Path:
    """A Flowise SQLite file holding these keys and flows; `flowise_3_0`: as Flowise 3.0 left it, before
    the migrations from AddApiKeyPermission on (no `apikey.permissions`: the keys' own are not stored)."""
    ddl = SQLITE_DDL[:SQLITE_DDL.index(SQLITE_PERMISSIONS)] if flowise_3_0 else SQLITE_DDL
    conn = sqlite3.connect(path)
    try:
        with conn:
            for statement in ddl:
                conn.execute(statement)
            conn.executemany('INSERT INTO "workspace" ("id", "name") VALUES (?, ?)',
                             [(w, f"workspace {w[:8]}") for w in _workspaces(keys, flows)])
            rows = [row[:4] + row[5:] if flowise_3_0 else row for row in _key_rows(keys)]
            columns = '"id", "apiKey", "apiSecret", "keyName", ' + ("" if flowise_3_0 else '"permissions", ')
            conn.executemany(f'INSERT INTO "apikey" ({columns}"workspaceId") VALUES ({", ".join("?" * len(rows[0]))})',
                             rows)
            conn.executemany('INSERT INTO "chat_flow" ("id", "name", "flowData", "apikeyid", "workspaceId") '
                             "VALUES (?, ?, ?, ?, ?)", _flow_rows(flows))
    finally:
        conn.close()
    return path


async def postgres_flowise(url: str, keys: Sequence[Key], flows: Sequence[Flow], *, ddl: bool = True) -> None:
    """These keys and flows in a Flowise database at `url`: Flowise's tables are created first (the
    database is empty) unless `ddl` is off (Flowise's own migrations made them; then no workspace row is
    made and references to workspaces are not checked: the import never reads that table)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            for statement in POSTGRES_DDL if ddl else ("SET LOCAL session_replication_role = replica",):
                await conn.execute(statement)
            if ddl:  # Flowise 3.1.4's own workspace rows need an organization and users besides
                await conn.executemany('INSERT INTO workspace (id, "name") VALUES ($1::uuid, $2)',
                                       [(w, f"workspace {w[:8]}") for w in _workspaces(keys, flows)])
            await conn.executemany('INSERT INTO apikey (id, "apiKey", "apiSecret", "keyName", permissions, '
                                   '"workspaceId") VALUES ($1::uuid, $2, $3, $4, $5::jsonb, $6::uuid)',
                                   _key_rows(keys))
            await conn.executemany('INSERT INTO chat_flow (id, "name", "flowData", apikeyid, "workspaceId") '
                                   "VALUES ($1::uuid, $2, $3, $4, $5::uuid)", _flow_rows(flows))
    finally:
        await conn.close()
