// The API docs at /docs: Swagger UI from the swagger-ui-bundle-v2 package, served by the
// service itself (no CDN), over /openapi.json. A file of its own: the page's
// Content-Security-Policy allows no inline script.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
