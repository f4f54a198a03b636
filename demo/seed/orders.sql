-- The orders service's database: it keeps a read-only replica of the users it needs.
-- Run against the `orders` database by scripts/demo (idempotent).

CREATE TABLE IF NOT EXISTS orders (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id    bigint      NOT NULL,   -- refers to user_replica; no foreign key across services
  total      numeric(12, 2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Written only by walcast's orders-user-replica sink. (_walcast_lsn, _walcast_seq) is the
-- source position of the row's latest change: it guards against stale and repeated writes.
CREATE TABLE IF NOT EXISTS user_replica (
  user_id      bigint PRIMARY KEY,
  name         text,
  email        text,
  _walcast_lsn     bigint   NOT NULL,
  _walcast_seq     integer  NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON user_replica TO walcast;
GRANT CREATE ON SCHEMA public TO walcast;
