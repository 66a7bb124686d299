// A small JSON Schema checker for the protocol definition's message schemas: exactly the keywords
// the definition uses (the same subset as the edge worker's protocol_schema.py; a test keeps the
// definition inside it and compares the verdicts with the server's validator). No DOM, no deps.

function isType(value, kind) {
  if (Array.isArray(kind)) return kind.some((one) => isType(value, one)); // any of a list
  switch (kind) {
    case "object":
      return value !== null && typeof value === "object" && !Array.isArray(value);
    case "array":
      return Array.isArray(value);
    case "string":
      return typeof value === "string";
    case "boolean":
      return typeof value === "boolean";
    case "null":
      return value === null;
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "integer":
      return Number.isInteger(value);
    default:
      return false;
  }
}

const patterns = new Map();
function compiled(pattern) {
  if (!patterns.has(pattern)) patterns.set(pattern, new RegExp(pattern, "u"));
  return patterns.get(pattern);
}

// JSON Schema counts a string's length in code points, not UTF-16 units.
const codePoints = (text) => [...text].length;

/** The first way `value` breaks `schema` as "path: reason", or null when it fits. */
export function checkSchema(schema, value, path = "") {
  const where = path || "message";
  if (schema.type !== undefined && !isType(value, schema.type)) return `${where}: expected ${schema.type}`;
  if ("const" in schema && value !== schema.const) return `${where}: must be ${JSON.stringify(schema.const)}`;
  if (schema.enum && !schema.enum.includes(value)) return `${where}: must be one of ${schema.enum.join(", ")}`;
  if (schema.anyOf && schema.anyOf.every((option) => checkSchema(option, value, path) !== null)) {
    return `${where}: matches none of the allowed forms`;
  }
  if (typeof value === "string") {
    const length = codePoints(value);
    if (length < (schema.minLength ?? 0)) return `${where}: shorter than ${schema.minLength}`;
    if (schema.maxLength !== undefined && length > schema.maxLength) return `${where}: longer than ${schema.maxLength}`;
    if (schema.pattern !== undefined && !compiled(schema.pattern).test(value)) {
      return `${where}: does not match ${schema.pattern}`;
    }
  } else if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) return `${where}: less than ${schema.minimum}`;
    if (schema.maximum !== undefined && value > schema.maximum) return `${where}: greater than ${schema.maximum}`;
  } else if (Array.isArray(value)) {
    if (value.length < (schema.minItems ?? 0)) return `${where}: fewer than ${schema.minItems} items`;
    if (schema.maxItems !== undefined && value.length > schema.maxItems) return `${where}: more than ${schema.maxItems} items`;
    if (schema.items) {
      for (let i = 0; i < value.length; i++) {
        const problem = checkSchema(schema.items, value[i], `${path}/${i}`);
        if (problem) return problem;
      }
    }
  } else if (isType(value, "object")) {
    const missing = (schema.required ?? []).filter((name) => !Object.hasOwn(value, name));
    if (missing.length) return `${where}: missing ${missing.join(", ")}`;
    const properties = schema.properties ?? {};
    for (const [name, item] of Object.entries(value)) {
      if (Object.hasOwn(properties, name)) {
        const problem = checkSchema(properties[name], item, `${path}/${name}`);
        if (problem) return problem;
      } else if (schema.additionalProperties === false) {
        return `${where}: unexpected field ${JSON.stringify(name)}`;
      }
    }
  }
  return null;
}
