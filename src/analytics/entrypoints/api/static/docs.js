// Renders /api/v1/openapi.json with the vendored Swagger UI (no CDN, no inline script:
// the docs page's Content-Security-Policy allows only 'self').
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: false,
    docExpansion: "list",
    validatorUrl: null,
    persistAuthorization: false,
  });
});
