-- The users service's own database: the source walcast tails.
-- Run against the `users` database by scripts/demo (idempotent).

-- Tables are owned by a group role that walcast is a member of, so walcast may create the
-- publication for them without being their owner or a superuser (the set-up Debezium documents).
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'users_owner') THEN
    CREATE ROLE users_owner NOLOGIN;
  END IF;
END $$;
GRANT users_owner TO walcast;
-- walcast creates its publication itself, which needs CREATE on the database.
DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO walcast', current_database()); END $$;

CREATE TABLE IF NOT EXISTS users (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  full_name     text        NOT NULL,
  email         text        NOT NULL UNIQUE,
  password_hash text        NOT NULL,   -- never leaves the service: no contract maps it
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS addresses (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id     bigint  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  line1       text    NOT NULL,
  city        text    NOT NULL,
  postal_code text,
  country     char(2) NOT NULL
);

ALTER TABLE users OWNER TO users_owner;
ALTER TABLE addresses OWNER TO users_owner;
GRANT SELECT ON users, addresses TO walcast;

INSERT INTO users (full_name, email, password_hash)
SELECT v.full_name, v.email, md5(v.email)
FROM (VALUES ('Ada Lovelace', 'ada@example.com'),
             ('Grace Hopper', 'grace@example.com'),
             ('Edsger Dijkstra', 'edsger@example.com')) AS v (full_name, email)
WHERE NOT EXISTS (SELECT FROM users);

INSERT INTO addresses (user_id, line1, city, postal_code, country)
SELECT u.id, v.line1, v.city, v.postal_code, v.country
FROM (VALUES ('ada@example.com', '12 St James''s Square', 'London', 'SW1Y 4JH', 'GB'),
             ('grace@example.com', '1 Navy Way', 'Arlington', NULL, 'US')) AS v (email, line1, city, postal_code, country)
JOIN users u ON u.email = v.email
WHERE NOT EXISTS (SELECT FROM addresses);
