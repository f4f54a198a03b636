-- The shipping service's MariaDB database: a replica of users' postal addresses.
-- Run by scripts/demo with the mariadb client (idempotent).
CREATE DATABASE IF NOT EXISTS shipping;
USE shipping;
CREATE TABLE IF NOT EXISTS address_replica (
  address_id   BIGINT PRIMARY KEY,
  user_id      BIGINT,
  line1        VARCHAR(255),
  city         VARCHAR(255),
  postal_code  VARCHAR(32),
  country      CHAR(2),
  _walcast_lsn     BIGINT UNSIGNED NOT NULL,
  _walcast_seq     INT UNSIGNED NOT NULL
) ENGINE = InnoDB;
