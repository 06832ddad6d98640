/**
 * A PostgreSQL schema name the cluster's tables live in, checked and quoted once: schema names reach SQL text (they
 * cannot be bind parameters), so only plain lower-case identifiers are accepted.
 */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** `"name"` for a valid schema name. Throws RangeError otherwise (what the rule is, and the name given). */
export function quoteSchema(name: string): string {
  // pg_ names are reserved by PostgreSQL (CREATE SCHEMA refuses them).
  if (!SCHEMA_NAME.test(name) || name.startsWith('pg_')) {
    throw new RangeError(`schema name ${JSON.stringify(name)} must be 1-63 characters of a-z, 0-9 and _, not starting with a digit or pg_`);
  }
  return `"${name}"`;
}
