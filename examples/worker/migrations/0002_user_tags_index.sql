CREATE INDEX IF NOT EXISTS user_tags_by_tag ON user_tags (tag);
