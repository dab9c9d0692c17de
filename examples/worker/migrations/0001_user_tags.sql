-- Tags a user gives themself: colocated with nothing, read by raw SQL on every shard.
CREATE TABLE IF NOT EXISTS user_tags (
    user_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (user_id, tag)
);
