-- Schema registry storage (Confluent REST subset). One row per distinct schema;
-- subjects map versions to schema ids. Soft deletes keep ids resolvable.
CREATE TABLE registry_schemas (
    id          SERIAL PRIMARY KEY,
    schema_type TEXT NOT NULL DEFAULT 'AVRO',
    schema_text TEXT NOT NULL,
    -- Whitespace- and key-order-insensitive form: same key -> same global id.
    identity    TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE registry_subject_versions (
    subject    TEXT NOT NULL,
    version    INT  NOT NULL CHECK (version > 0),
    schema_id  INT  NOT NULL REFERENCES registry_schemas(id),
    deleted    BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);
CREATE INDEX registry_subject_versions_schema ON registry_subject_versions(schema_id);

-- Compatibility level; subject '' holds the global default.
CREATE TABLE registry_config (
    subject       TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL CHECK (compatibility IN (
        'NONE', 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', 'FULL_TRANSITIVE'))
);
INSERT INTO registry_config (subject, compatibility) VALUES ('', 'BACKWARD');
