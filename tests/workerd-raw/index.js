// A raw D1 Worker: the baseline the load benchmark compares the Worker example against. It runs
// the same SQL as the example's hash-placed `users` model (collegedb's rendered statements, byte
// for byte), on one D1 database, with the same JSON request and response shapes:
//
//   GET  /health      readiness                              200 {"status": "ok"}
//   POST /setup       creates the table                      200 {"shards": ["DB"]}
//   POST /users       inserts the row in the body            201 the row, as sent
//   GET  /users/{id}  finds a row by key                     200 the row | 404 {"error", "code"}
//
// Values map as the example maps them: booleans as 0/1, a byte array as a BLOB, `profile` as JSON
// text. No sharding, no directory, no coordinator.

const CREATE =
  'CREATE TABLE IF NOT EXISTS "users" ( "id" text NOT NULL PRIMARY KEY, "name" text NOT NULL, ' +
  '"email" text, "karma" integer NOT NULL, "active" integer NOT NULL, "avatar" blob, "profile" text NOT NULL )';
const INSERT =
  'INSERT INTO "users" ("id", "name", "email", "karma", "active", "avatar", "profile") VALUES (?, ?, ?, ?, ?, ?, ?)';
const SELECT =
  'SELECT "id", "name", "email", "karma", "active", "avatar", "profile" FROM "users" WHERE "id" = ?';

const json = (body, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

const error = (message, code, status) => json({ error: message, code }, status);

async function insert(env, request) {
  let row;
  try {
    row = await request.json();
  } catch (e) {
    return error(String(e), "BAD_BODY", 400);
  }
  const avatar = row.avatar == null ? null : new Uint8Array(row.avatar).buffer;
  try {
    await env.DB.prepare(INSERT)
      .bind(row.id, row.name, row.email ?? null, row.karma, row.active ? 1 : 0, avatar,
        JSON.stringify(row.profile))
      .run();
  } catch (e) {
    const message = String(e.cause?.message ?? e.message ?? e);
    if (message.includes("UNIQUE constraint failed")) {
      return error(`users: key \`${row.id}\` already exists`, "DUPLICATE_KEY", 409);
    }
    return error(message, "QUERY_FAILED", 500);
  }
  return json({
    id: row.id,
    name: row.name,
    email: row.email ?? null,
    karma: row.karma,
    active: row.active,
    avatar: row.avatar ?? null,
    profile: row.profile,
  }, 201);
}

async function find(env, id) {
  const row = await env.DB.prepare(SELECT).bind(id).first();
  if (row === null) {
    return error("not found", "ROW_NOT_FOUND", 404);
  }
  return json({
    id: row.id,
    name: row.name,
    email: row.email,
    karma: row.karma,
    active: row.active !== 0,
    avatar: row.avatar == null ? null : Array.from(row.avatar),
    profile: JSON.parse(row.profile),
  });
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    const parts = pathname.split("/").filter(Boolean);
    if (request.method === "GET" && parts.length === 1 && parts[0] === "health") {
      return json({ status: "ok" });
    }
    if (request.method === "POST" && parts.length === 1 && parts[0] === "setup") {
      await env.DB.prepare(CREATE).run();
      return json({ shards: ["DB"] });
    }
    if (parts[0] === "users") {
      if (request.method === "POST" && parts.length === 1) {
        return insert(env, request);
      }
      if (request.method === "GET" && parts.length === 2) {
        return find(env, decodeURIComponent(parts[1]));
      }
    }
    return new Response("no such route", { status: 404 });
  },
};
