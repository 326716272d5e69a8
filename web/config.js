// The page's configuration. The paid actions and their prices are not here: the page reads them from
// the API (GET /credit-prices, the ActionCosts parameter the API is deployed with).
//
// Deployed: set apiBase to the API URL (no trailing slash) and auth to "token", and give the page a
// getToken() that returns the signed-in user's JWT from your identity provider, e.g.
//   auth: "token", getToken: async () => (await myAuth.currentSession()).idToken,
// Optional: userName (shown as "Signed in as …"), signOut() (shows a Sign out button) and
// actionLabels, the name to show for an action id (e.g. { analyze: "Deep analysis" }; by default
// the id with a capital letter: "search" is "Search").
window.CREDITS_CONFIG = {
  apiBase: "",
  auth: "local", // "local": the local stack's sign-in stand-in; "token": getToken() below
  // Where the action buttons send their requests: the example premium function, which holds the
  // price while the action runs and charges only if it succeeds (deploy it with DeployExamples=true).
  // null: charge through POST /credits/use instead.
  actionPath: "/examples/",
  lowBalance: 10,
};
