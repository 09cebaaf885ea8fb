"""PostgreSQL: ``messaging.claim_next``, a listener's claim that fails unless
the message is next (see ``listener_state.claim_ahead``), and
``messaging.expect``, which fails the same way unless its condition holds
(see ``listeners.claiming_ahead``). Nothing on SQLite."""

from peewee import PostgresqlDatabase

# A refused claim raises SQLSTATE WQ001 (listener_state.REFUSED_CLAIM): class
# "WQ" is no one else's, PostgreSQL's classes and the SQL standard's leave it
# free. (The "%%" are RAISE's placeholders: peewee has psycopg2 bind the text.)
CLAIM_NEXT = """
CREATE OR REPLACE FUNCTION "messaging".claim_next(
    listener_name varchar, stream_name varchar, next_position bigint, required bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    held_count integer;
BEGIN
    -- The claims of listener_state.claim: with no predecessor to wait for,
    -- a stream new to the listener or any later position; else the position
    -- right after the required one.
    IF required = 0 THEN
        INSERT INTO "messaging"."messaging_stream_positions" AS s
            (listener, stream, position, held)
        VALUES (listener_name, stream_name, next_position, 0)
        ON CONFLICT (listener, stream) DO UPDATE SET position = EXCLUDED.position
        WHERE s.position < EXCLUDED.position
        RETURNING s.held INTO held_count;
    ELSE
        UPDATE "messaging"."messaging_stream_positions" AS s SET position = next_position
        WHERE s.listener = listener_name AND s.stream = stream_name
            AND s.position >= required AND s.position < next_position
        RETURNING s.held INTO held_count;
    END IF;
    IF held_count IS NULL OR held_count > 0 THEN
        RAISE EXCEPTION 'position %% of stream %% is not next for listener %%, '
            'or held messages wait for it', next_position, stream_name, listener_name
            USING ERRCODE = 'WQ001';
    END IF;
END
$$
"""


EXPECT = """
CREATE OR REPLACE FUNCTION "messaging".expect(expected boolean, what text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF expected IS NOT TRUE THEN
        RAISE EXCEPTION 'not as expected: %%', what USING ERRCODE = 'WQ001';
    END IF;
END
$$
"""


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(CLAIM_NEXT)
        db.execute_sql(EXPECT)


def down(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql('DROP FUNCTION "messaging".expect(boolean, text)')
        db.execute_sql('DROP FUNCTION "messaging".claim_next(varchar, varchar, bigint, bigint)')
