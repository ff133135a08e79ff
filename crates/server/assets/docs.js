// The API reference: renders the OpenAPI document of this server (/api/openapi.json) as HTML.
// Everything is built with DOM calls, never by parsing HTML, so nothing in the document is ever
// treated as markup.
'use strict';

(function () {
  const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'];

  /** An element with attributes and children (strings become text). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  /** Text with `code` spans, as the document's descriptions use them; one <p> per paragraph. */
  function prose(text, cls) {
    if (!text) return [];
    return String(text).split(/\n\s*\n/).map((para) => {
      const p = el('p', { class: cls || 'desc' });
      String(para).split('`').forEach((part, i) => {
        if (part) p.append(i % 2 ? el('code', null, part) : document.createTextNode(part));
      });
      return p;
    });
  }

  function refName(ref) {
    return ref.split('/').pop();
  }

  function schemaAnchor(name) {
    return `schema-${name}`;
  }

  /** A short description of a schema's type, linking named schemas. */
  function typeOf(schema) {
    if (!schema) return el('span', { class: 'type' }, 'any');
    if (schema.$ref) {
      const name = refName(schema.$ref);
      return el('a', { class: 'type', href: `#${schemaAnchor(name)}` }, name);
    }
    for (const key of ['oneOf', 'anyOf', 'allOf']) {
      if (Array.isArray(schema[key])) {
        const parts = schema[key].map(typeOf);
        const sep = key === 'allOf' ? ' & ' : ' | ';
        return el('span', null, parts.flatMap((p, i) => (i ? [sep, p] : [p])));
      }
    }
    let types = schema.type;
    if (Array.isArray(types)) types = types.join(' | ');
    if (types === 'array' || (schema.items && !types)) {
      return el('span', null, 'array of ', typeOf(schema.items));
    }
    if (Array.isArray(schema.type) && schema.type.includes('array')) {
      return el('span', null, 'array of ', typeOf(schema.items), schema.type.includes('null') ? ' | null' : '');
    }
    const label = [types || 'any'];
    if (schema.format) label.push(`(${schema.format})`);
    const out = el('span', null, el('span', { class: 'type' }, label.join(' ')));
    if (Array.isArray(schema.enum)) {
      out.append(' ', el('span', { class: 'enum' }, `one of: ${schema.enum.map((v) => JSON.stringify(v)).join(', ')}`));
    }
    const bounds = [];
    if (schema.minimum !== undefined) bounds.push(`≥ ${schema.minimum}`);
    if (schema.maximum !== undefined) bounds.push(`≤ ${schema.maximum}`);
    if (schema.minItems !== undefined) bounds.push(`at least ${schema.minItems}`);
    if (schema.default !== undefined) bounds.push(`default ${JSON.stringify(schema.default)}`);
    if (bounds.length) out.append(' ', el('span', { class: 'enum' }, bounds.join(', ')));
    return out;
  }

  /** The properties of an object schema as a table, or its type when it is not an object. */
  function schemaView(schema) {
    if (!schema || !schema.properties) return el('p', { class: 'desc' }, typeOf(schema));
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties).map(([name, prop]) =>
      el('tr', null,
        el('td', null, el('code', null, name), required.has(name) ? el('span', { class: 'required' }, ' required') : null),
        el('td', null, typeOf(prop)),
        el('td', null, prose(prop.description))));
    return el('table', null,
      el('thead', null, el('tr', null, el('th', null, 'field'), el('th', null, 'type'), el('th', null, 'description'))),
      el('tbody', null, rows));
  }

  function contentView(content) {
    return Object.entries(content || {}).map(([type, media]) =>
      el('div', null, el('p', { class: 'desc' }, 'Content type ', el('code', null, type)),
        media.schema ? schemaView(media.schema) : null));
  }

  function parametersView(params) {
    if (!params || !params.length) return [];
    const rows = params.map((p) =>
      el('tr', null,
        el('td', null, el('code', null, p.name), p.required ? el('span', { class: 'required' }, ' required') : null),
        el('td', null, p.in),
        el('td', null, typeOf(p.schema)),
        el('td', null, prose(p.description))));
    return [el('h4', null, 'Parameters'), el('table', null,
      el('thead', null, el('tr', null, el('th', null, 'name'), el('th', null, 'in'), el('th', null, 'type'), el('th', null, 'description'))),
      el('tbody', null, rows))];
  }

  function responsesView(responses) {
    const rows = Object.entries(responses || {}).map(([status, r]) => {
      const headers = Object.entries(r.headers || {}).map(([name, h]) =>
        el('p', { class: 'desc' }, 'Header ', el('code', null, name), h.description ? ` — ${h.description}` : ''));
      return el('tr', null,
        el('td', null, el('span', { class: `status s${status[0]}` }, status)),
        el('td', null, prose(r.description), headers, contentView(r.content)));
    });
    return [el('h4', null, 'Responses'), el('table', null, el('tbody', null, rows))];
  }

  function operationView(path, method, op) {
    const id = op.operationId || `${method}-${path}`;
    return el('section', { class: 'op', id: `op-${id}` },
      el('h3', null, el('span', { class: `method ${method}` }, method.toUpperCase()), path),
      prose(op.summary), prose(op.description),
      parametersView(op.parameters),
      op.requestBody ? [el('h4', null, 'Request body'), prose(op.requestBody.description), contentView(op.requestBody.content)] : [],
      responsesView(op.responses));
  }

  function render(doc) {
    const content = document.getElementById('content');
    const toc = document.getElementById('toc');
    content.replaceChildren();
    toc.replaceChildren();
    document.getElementById('title').textContent = `${doc.info.title} ${doc.info.version} — API reference`;
    document.getElementById('oas-version').textContent = doc.openapi;
    content.append(...prose(doc.info.description));

    const tags = (doc.tags || []).map((t) => t.name);
    const byTag = new Map(tags.map((t) => [t, []]));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const tag = (op.tags && op.tags[0]) || 'other';
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push([path, method, op]);
      }
    }
    for (const [tag, ops] of byTag) {
      if (!ops.length) continue;
      const info = (doc.tags || []).find((t) => t.name === tag);
      content.append(el('h2', { class: 'tag', id: `tag-${tag}` }, tag), ...prose(info && info.description));
      toc.append(el('h2', null, tag));
      const list = el('ul');
      for (const [path, method, op] of ops) {
        content.append(operationView(path, method, op));
        list.append(el('li', null, el('a', { href: `#op-${op.operationId}` }, `${method.toUpperCase()} ${path}`)));
      }
      toc.append(list);
    }

    const schemas = (doc.components && doc.components.schemas) || {};
    content.append(el('h2', { class: 'tag', id: 'schemas' }, 'Schemas'));
    toc.append(el('h2', null, 'schemas'));
    const list = el('ul');
    for (const [name, schema] of Object.entries(schemas)) {
      content.append(el('section', { class: 'op', id: schemaAnchor(name) },
        el('h3', null, name), prose(schema.description), schemaView(schema)));
      list.append(el('li', null, el('a', { href: `#${schemaAnchor(name)}` }, name)));
    }
    toc.append(list);
    if (location.hash) {
      const target = document.getElementById(location.hash.slice(1));
      if (target) target.scrollIntoView();
    }
  }

  async function load() {
    const status = document.getElementById('status');
    try {
      const resp = await fetch('/api/openapi.json', { headers: { accept: 'application/json' } });
      if (!resp.ok) throw new Error(`the server answered ${resp.status}`);
      render(await resp.json());
    } catch (e) {
      status.textContent = `The API description could not be loaded: ${e.message}`;
      status.className = 'error';
    }
  }

  load();
})();
