// The Entra app registration the sign-in proxy (oauth2-proxy, provider
// entra-id) signs users in with, its service principal, and the federated
// credential that lets the proxy's Kubernetes ServiceAccount redeem codes
// without a client secret (workload identity). Deployed through the
// Microsoft Graph Bicep extension, as the deploying user: main.bicep calls
// this module only when [access] host is set and no client_id is given.
//
// identifierUris must be api://<appId>, and the appId exists only once the
// app does; signin-api.bicep declares the same app (same uniqueName) a second
// time, in its own deployment, adding the App ID URI and the exposed API.
// Graph Bicep upserts by uniqueName and only writes the properties a
// declaration names, so neither declaration undoes the other on a re-deploy.
extension microsoftGraphV1

@description('Unique name of the app registration in the tenant (an alternate key; immutable once created).')
param uniqueName string

@description('Display name of the app registration.')
param displayName string

@description('Host name of the HTTPS entry point; the redirect URI is https://<host>/oauth2/callback.')
param host string

@description('OIDC issuer URL of the AKS cluster, the issuer of the proxy\'s ServiceAccount tokens.')
param oidcIssuerUrl string

@description('Subject of the proxy\'s ServiceAccount tokens: system:serviceaccount:<namespace>:<release>-signin.')
param serviceAccountSubject string

@description('Object ID of the deploying user or service principal, made an owner of the app so it can update it on the next deploy.')
param ownerPrincipalId string

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  groupMembershipClaims: 'SecurityGroup'
  web: {
    redirectUris: [
      'https://${host}/oauth2/callback'
    ]
    implicitGrantSettings: {
      enableIdTokenIssuance: false
      enableAccessTokenIssuance: false
    }
  }
  optionalClaims: {
    idToken: [
      {
        name: 'email'
        essential: false
      }
    ]
    accessToken: [
      {
        name: 'email'
        essential: false
      }
    ]
  }
  owners: {
    relationships: [
      ownerPrincipalId
    ]
  }

  resource proxyCredential 'federatedIdentityCredentials@v1.0' = {
    name: '${app.uniqueName}/metaflow-signin'
    description: 'The Metaflow sign-in proxy\'s Kubernetes ServiceAccount (AKS workload identity)'
    issuer: oidcIssuerUrl
    subject: serviceAccountSubject
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
}

module api 'signin-api.bicep' = {
  name: 'mfhelm-signin-api'
  params: {
    uniqueName: uniqueName
    displayName: displayName
    appId: app.appId
  }
}

@description('Application (client) ID of the app registration.')
output clientId string = app.appId

@description('Object ID of the app\'s service principal in the tenant.')
output servicePrincipalId string = servicePrincipal.id

@description('The App ID URI laptops ask tokens for (scope <uri>/.default).')
output identifierUri string = api.outputs.identifierUri
