// The stack's Azure Container Registry: where `mfhelm image build` builds the
// flow image (ACR's own build service, no local Docker) and where the AKS
// nodes pull it from. Entra ID only: no admin user, no anonymous pull, no
// tokens. The kubelet identity may pull (AcrPull); the deployer may run ACR
// builds on this registry (Container Registry Tasks Contributor).
//
// SKU Standard: ACR Tasks and Entra auth work on every tier, but Basic
// includes 10 GiB of storage (a few Python images with their dependencies)
// and the lowest pull throughput, while many task pods start at once here.
// Premium adds private endpoints, retention of untagged manifests, zone
// redundancy and geo-replication, none of which this public-endpoint stack
// uses, at about 2.5 times Standard's daily price.

@description('Azure region of the registry.')
param location string

@description('Short organisation prefix used in every resource name.')
param orgPrefix string

@description('Deterministic suffix that keeps the registry name (a global DNS name) unique.')
param nameSuffix string

@description('Object ID of the AKS kubelet identity, which pulls the flow image.')
param kubeletPrincipalId string

@description('Object ID of the deployer, who runs `mfhelm image build`.')
param deployerPrincipalId string

@description('Type of the deployer principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Tags applied to every resource.')
param tags object = {}

// Built-in role IDs (Azure built-in roles, Containers).
// AcrPull: Microsoft.ContainerRegistry/registries/pull/read only.
var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
// Container Registry Tasks Contributor: listBuildSourceUploadUrl, scheduleRun,
// runs/read, runs/listLogSasUrl (what a quick build needs) plus the tasks,
// task runs and agent pools of this registry; no registry write, no
// credentials, no role assignments. The smallest built-in role with
// scheduleRun; the build itself pushes with the registry's own rights.
var tasksContributorRoleId = 'fb382eab-e894-4461-af04-94435c366c3f'

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' = {
  // checkov:skip=CKV_AZURE_139:the AKS nodes and ACR's build service reach the registry over its public endpoint (private endpoints need Premium and a private DNS zone); every request needs an Entra token
  // checkov:skip=CKV_AZURE_166:quarantine needs Premium and a scanner that releases each image; the flow image is built here from a pinned Dockerfile
  name: '${orgPrefix}acr${nameSuffix}'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
    // Azure RBAC roles (AcrPull) grant the pull; in the ABAC mode AcrPull
    // is not honoured. Set, not defaulted, so a new API default cannot
    // silently stop the nodes pulling.
    roleAssignmentMode: 'LegacyRegistryPermissions'
  }
}

resource kubeletPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, kubeletPrincipalId, acrPullRoleId)
  scope: registry
  properties: {
    principalId: kubeletPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
  }
}

resource deployerBuilds 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, deployerPrincipalId, tasksContributorRoleId)
  scope: registry
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', tasksContributorRoleId)
  }
}

@description('Name of the registry.')
output name string = registry.name

@description('Login server of the registry (<name>.azurecr.io in the public cloud).')
output loginServer string = registry.properties.loginServer
