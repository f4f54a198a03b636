#!/bin/sh
# Creates the demo databases in the compose deployment's PostgreSQL, as scripts/demo does locally.
set -e
psql -v ON_ERROR_STOP=1 -U postgres <<SQL
CREATE ROLE walcast LOGIN REPLICATION PASSWORD 'walcast';
CREATE DATABASE users;
CREATE DATABASE orders;
SQL
psql -v ON_ERROR_STOP=1 -U postgres -d users -f /seed/users.sql
psql -v ON_ERROR_STOP=1 -U postgres -d orders -f /seed/orders.sql
